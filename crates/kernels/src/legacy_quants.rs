//! llama.cpp's older 32-value block formats Q4_1, Q5_0, Q5_1 dequantized to f32: the reference
//! of their kernels ([`crate::ggml`] runs them as stored) and the import path of the modes that
//! re-quantize (Q4_0 and Q8_0 are our own run formats, see [`crate::q4`] and [`crate::q8`]). In every one, byte `j` of `qs` holds value `j` in its low nibble and value
//! `j + 16` in its high nibble; Q5 formats keep each value's fifth bit in a 32-bit `qh`
//! (bit `j` for value `j`).
use half::f16;

pub const QK: usize = 32;
pub const Q4_1_BYTES: usize = 20;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn check(bytes: &[u8], out: &[f32], block_bytes: usize) {
    assert!(out.len() % QK == 0 && bytes.len() == out.len() / QK * block_bytes, "ggml block: byte/value count mismatch");
}

/// The 32 unsigned codes of a block: 4 bits from `qs`, plus the fifth bit from `qh` when given.
fn codes(qs: &[u8], qh: Option<u32>) -> [u8; QK] {
    let mut q = [0u8; QK];
    for j in 0..16 {
        q[j] = qs[j] & 0xF;
        q[j + 16] = qs[j] >> 4;
    }
    if let Some(h) = qh {
        for (j, c) in q.iter_mut().enumerate() {
            *c |= (((h >> j) & 1) as u8) << 4;
        }
    }
    q
}

/// Q4_1: f16 scale `d`, f16 offset `m`, 4-bit codes: `x = d·q + m`.
pub fn dequantize_q4_1(bytes: &[u8], out: &mut [f32]) {
    check(bytes, out, Q4_1_BYTES);
    for (b, y) in bytes.chunks_exact(Q4_1_BYTES).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (y, q) in y.iter_mut().zip(codes(&b[4..20], None)) {
            *y = d * q as f32 + m;
        }
    }
}

/// Q5_0: f16 scale `d`, 5-bit codes centred on 16: `x = d·(q − 16)`.
pub fn dequantize_q5_0(bytes: &[u8], out: &mut [f32]) {
    check(bytes, out, Q5_0_BYTES);
    for (b, y) in bytes.chunks_exact(Q5_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for (y, q) in y.iter_mut().zip(codes(&b[6..22], Some(qh))) {
            *y = d * (q as i32 - 16) as f32;
        }
    }
}

/// Q5_1: f16 scale `d`, f16 offset `m`, 5-bit codes: `x = d·q + m`.
pub fn dequantize_q5_1(bytes: &[u8], out: &mut [f32]) {
    check(bytes, out, Q5_1_BYTES);
    for (b, y) in bytes.chunks_exact(Q5_1_BYTES).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for (y, q) in y.iter_mut().zip(codes(&b[8..24], Some(qh))) {
            *y = d * q as f32 + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    /// Hand-built blocks: value 0 from a low nibble, value 16 from the high nibble of the same byte,
    /// value 17 with only its fifth bit set.
    #[test]
    fn q4_1_nibbles_and_offset() {
        let mut b = [0u8; Q4_1_BYTES];
        b[0..2].copy_from_slice(&half(0.5));
        b[2..4].copy_from_slice(&half(-1.0));
        b[4] = 0x9E; // value 0: 14, value 16: 9
        let mut y = [0f32; QK];
        dequantize_q4_1(&b, &mut y);
        assert_eq!((y[0], y[16], y[1]), (0.5 * 14.0 - 1.0, 0.5 * 9.0 - 1.0, -1.0));
    }

    #[test]
    fn q5_0_fifth_bit_and_centre() {
        let mut b = [0u8; Q5_0_BYTES];
        b[0..2].copy_from_slice(&half(0.25));
        b[2..6].copy_from_slice(&((1u32 << 0) | (1u32 << 17)).to_le_bytes());
        b[6] = 0x3F; // value 0: 15 (+16 from qh = 31), value 16: 3
        let mut y = [0f32; QK];
        dequantize_q5_0(&b, &mut y);
        assert_eq!((y[0], y[16], y[17], y[1]), (0.25 * 15.0, 0.25 * -13.0, 0.0, 0.25 * -16.0));
    }

    #[test]
    fn q5_1_fifth_bit_and_offset() {
        let mut b = [0u8; Q5_1_BYTES];
        b[0..2].copy_from_slice(&half(2.0));
        b[2..4].copy_from_slice(&half(0.5));
        b[4..8].copy_from_slice(&(1u32 << 31).to_le_bytes());
        b[8 + 15] = 0x70; // value 31: 7 (+16 from qh = 23)
        let mut y = [0f32; QK];
        dequantize_q5_1(&b, &mut y);
        assert_eq!((y[31], y[15], y[0]), (2.0 * 23.0 + 0.5, 0.5, 0.5));
    }
}
