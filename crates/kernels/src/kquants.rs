//! llama.cpp's k-quant formats (super-blocks of 256 values), dequantized to f32: the reference of
//! the Q4_K / Q5_K / Q6_K kernels ([`crate::ggml`] runs them as stored), the load path of Q2_K /
//! Q3_K (run as f32), and of every k-quant when a mode re-quantizes into our formats.
use half::f16;

pub const QK_K: usize = 256;
pub const Q2K_BYTES: usize = 84;
pub const Q3K_BYTES: usize = 110;
pub const Q4K_BYTES: usize = 144;
pub const Q5K_BYTES: usize = 176;
pub const Q6K_BYTES: usize = 210;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The 6-bit scale and min of Q4_K / Q5_K sub-block `j` (0..8), packed into 12 bytes (also read by
/// the as-stored kernels' packing, `ggml::layout`).
pub(crate) fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// [`scale_min`] as f32, for the dequantizers.
fn scale_min_f32(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = scale_min(j, q);
    (d as f32, m as f32)
}

fn check(bytes: &[u8], out: &[f32], block_bytes: usize) {
    assert!(out.len() % QK_K == 0 && bytes.len() == out.len() / QK_K * block_bytes, "k-quant: byte/value count mismatch");
}

/// Q2_K: 16 sub-blocks of 16 values, each with a 4-bit scale and 4-bit min (`scales[i]`: low
/// nibble scale, high nibble min), 2-bit values, f16 `d` and `dmin` at the end:
/// `x = d·scale·q − dmin·min`. Values are stored 4 per byte: byte `l` of a 32-byte group holds
/// values `l`, `l+32`, `l+64`, `l+96` of its 128-value half in bits 0-1, 2-3, 4-5, 6-7.
pub fn dequantize_q2_k(bytes: &[u8], out: &mut [f32]) {
    check(bytes, out, Q2K_BYTES);
    for (b, y) in bytes.chunks_exact(Q2K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (scales, qs, d, dmin) = (&b[0..16], &b[16..80], f16_at(b, 80), f16_at(b, 82));
        for (half, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(128)).enumerate() {
            for plane in 0..4 {
                for sub in 0..2 {
                    let sc = scales[half * 8 + plane * 2 + sub];
                    let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                    for l in 0..16 {
                        let v = (q[sub * 16 + l] >> (2 * plane)) & 3;
                        y[plane * 32 + sub * 16 + l] = dl * v as f32 - ml;
                    }
                }
            }
        }
    }
}

/// The sixteen 6-bit scales of a Q3_K block (stored +32), packed into 12 bytes: the low 4 bits of
/// scale `i` are the low nibble of byte `i` (i < 8) or the high nibble of byte `i − 8`; the high 2
/// bits are bits `2·(i / 4)` and up of byte `8 + i % 4`.
fn q3k_scales(packed: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, s) in out.iter_mut().enumerate() {
        let low = if i < 8 { packed[i] & 0xF } else { packed[i - 8] >> 4 };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    out
}

/// Q3_K: 16 sub-blocks of 16 values with signed 6-bit scales, 2 low bits per value in `qs` (laid out
/// as Q2_K's) and a high bit in `hmask` (bit `plane + 4·half` of byte `l`); a clear high bit
/// subtracts 4: `x = d·scale·(q − 4·!h)`, q in 0..4.
pub fn dequantize_q3_k(bytes: &[u8], out: &mut [f32]) {
    check(bytes, out, Q3K_BYTES);
    for (b, y) in bytes.chunks_exact(Q3K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (hmask, qs, d) = (&b[0..32], &b[32..96], f16_at(b, 108));
        let scales = q3k_scales(&b[96..108]);
        for (half, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(128)).enumerate() {
            for plane in 0..4 {
                let bit = 1u8 << (plane + 4 * half);
                for sub in 0..2 {
                    let dl = d * scales[half * 8 + plane * 2 + sub] as f32;
                    for l in 0..16 {
                        let at = sub * 16 + l;
                        let low = ((q[at] >> (2 * plane)) & 3) as i32;
                        let v = if hmask[at] & bit != 0 { low } else { low - 4 };
                        y[plane * 32 + at] = dl * v as f32;
                    }
                }
            }
        }
    }
}

/// Q4_K: per super-block f16 `d`, `dmin`, 8 sub-blocks of 32 with 6-bit scales and mins, 4-bit values:
/// `x = d·scale·q − dmin·min`.
pub fn dequantize_q4_k(bytes: &[u8], out: &mut [f32]) {
    check(bytes, out, Q4K_BYTES);
    for (b, y) in bytes.chunks_exact(Q4K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for (g, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (s1, m1) = scale_min_f32(2 * g, scales);
            let (s2, m2) = scale_min_f32(2 * g + 1, scales);
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
            let (s1, m1) = scale_min_f32(2 * g, scales);
            let (s2, m2) = scale_min_f32(2 * g + 1, scales);
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

    /// Q2_K: the scale and min of sub-block 9 (second half, plane 0, values 144..160) and a value in
    /// bit plane 3 of the second half (value 128 + 96).
    #[test]
    fn q2_k_planes_scales_and_mins() {
        let mut b = vec![0u8; Q2K_BYTES];
        b[80..82].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b[82..84].copy_from_slice(&f16::from_f32(0.125).to_bits().to_le_bytes());
        b[9] = 0x35; // sub-block 9: scale 5, min 3
        b[14] = 0x07; // sub-block 14 (second half, plane 3, first 16): scale 7, min 0
        b[16 + 32 + 16] = 0b11_00_00_10; // second half, byte 16: plane 0 value 2, plane 3 value 3
        let mut y = vec![0f32; QK_K];
        dequantize_q2_k(&b, &mut y);
        assert_eq!(y[128 + 16], 0.5 * 5.0 * 2.0 - 0.125 * 3.0);
        assert_eq!(y[128 + 17], -0.125 * 3.0);
        assert_eq!(y[128 + 96 + 16], 0.0, "plane 3 of byte 16 belongs to sub-block 15 (scale 0)");
        assert_eq!(y[0], 0.0);
    }

    /// Q3_K: the packed 6-bit scales (low nibbles, high nibbles, 2-bit highs), and the high-bit mask.
    #[test]
    fn q3_k_scales_and_high_bit() {
        let mut packed = [0u8; 12];
        packed[1] = 0x2A; // scale 1 low 0xA, scale 9 low 0x2
        packed[9] = 0b10_00_00_11; // scale 1 high 3, scale 13 high 2
        let s = q3k_scales(&packed);
        assert_eq!((s[1], s[9], s[13], s[0]), ((0xA | 3 << 4) - 32, 2 - 32, (2 << 4) - 32, -32));

        let mut b = vec![0u8; Q3K_BYTES];
        b[108..110].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b[96] = 0x01; // scale 0: 1 (low), high 0 -> 1 - 32 = -31
        b[96 + 8] = 0b10; // scale 0 high bits = 2 -> 33 - 32 = 1
        b[32] = 0b11; // value 0: low bits 3
        b[0] = 0b1; // value 0: high bit (plane 0, first half) set: q = 3
        let mut y = vec![0f32; QK_K];
        dequantize_q3_k(&b, &mut y);
        assert_eq!(y[0], 0.5 * 1.0 * 3.0);
        assert_eq!(y[1], 0.5 * 1.0 * -4.0, "a clear high bit subtracts 4");
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
