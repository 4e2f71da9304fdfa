//! llama.cpp's k-quant formats (super-blocks of 256 values), dequantized to f32. GGUF files quantized
//! with Q4_K / Q5_K / Q6_K load through these; the engine then runs the f32 values (or re-quantizes
//! them into a format it has kernels for).
use half::f16;

pub const QK_K: usize = 256;
pub const Q4K_BYTES: usize = 144;
pub const Q5K_BYTES: usize = 176;
pub const Q6K_BYTES: usize = 210;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8), packed into 12 bytes.
fn scale_min(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d as f32, m as f32)
    }
}

fn check(bytes: &[u8], out: &[f32], block_bytes: usize) {
    assert!(out.len() % QK_K == 0 && bytes.len() == out.len() / QK_K * block_bytes, "k-quant: byte/value count mismatch");
}

/// Q4_K: per super-block f16 `d`, `dmin`, 8 sub-blocks of 32 with 6-bit scales and mins, 4-bit values:
/// `x = d·scale·q − dmin·min`.
pub fn dequantize_q4_k(bytes: &[u8], out: &mut [f32]) {
    check(bytes, out, Q4K_BYTES);
    for (b, y) in bytes.chunks_exact(Q4K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for (g, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (s1, m1) = scale_min(2 * g, scales);
            let (s2, m2) = scale_min(2 * g + 1, scales);
            for l in 0..32 {
                y[l] = d * s1 * (q[l] & 0xF) as f32 - dmin * m1;
                y[l + 32] = d * s2 * (q[l] >> 4) as f32 - dmin * m2;
            }
        }
    }
}

/// Q5_K: Q4_K plus one high bit per value in `qh`.
pub fn dequantize_q5_k(bytes: &[u8], out: &mut [f32]) {
    check(bytes, out, Q5K_BYTES);
    for (b, y) in bytes.chunks_exact(Q5K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
        for (g, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (s1, m1) = scale_min(2 * g, scales);
            let (s2, m2) = scale_min(2 * g + 1, scales);
            let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
            for l in 0..32 {
                let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d * s1 * ((q[l] & 0xF) + hi1) as f32 - dmin * m1;
                y[l + 32] = d * s2 * ((q[l] >> 4) + hi2) as f32 - dmin * m2;
            }
        }
    }
}

/// Q6_K: 6-bit values (4 low bits in `ql`, 2 high bits in `qh`) minus 32, 16 int8 sub-block
/// scales, one f16 `d` at the end of the block.
pub fn dequantize_q6_k(bytes: &[u8], out: &mut [f32]) {
    check(bytes, out, Q6K_BYTES);
    for (b, y) in bytes.chunks_exact(Q6K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], f16_at(b, 208));
        for half in 0..2 {
            let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
            let y = &mut y[128 * half..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-built blocks with known values: one scale/min pair set, everything else zero.
    #[test]
    fn q4_k_first_sub_block() {
        let mut b = vec![0u8; Q4K_BYTES];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        b[4] = 3; // scale of sub-block 0
        b[8] = 2; // min of sub-block 0
        b[16] = 0x57; // value 0: low nibble 7, value 32: high nibble 5 (sub-block 1: scale 0, min 0)
        let mut y = vec![0f32; QK_K];
        dequantize_q4_k(&b, &mut y);
        assert_eq!(y[0], 0.5 * 3.0 * 7.0 - 0.25 * 2.0);
        assert_eq!(y[1], -0.5);
        assert_eq!(y[32], 0.0);
    }

    #[test]
    fn q6_k_value_and_sign() {
        let mut b = vec![0u8; Q6K_BYTES];
        b[208..210].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b[192] = (-2i8) as u8; // scale of values 0..16
        b[0] = 0x0F; // value 0: low bits 15
        b[128] = 0b11; // value 0: high bits 3 -> q = 63 - 32 = 31
        let mut y = vec![0f32; QK_K];
        dequantize_q6_k(&b, &mut y);
        assert_eq!(y[0], 0.5 * -2.0 * 31.0);
        assert_eq!(y[1], 0.5 * -2.0 * -32.0);
    }
}
