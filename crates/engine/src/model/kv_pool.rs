//! The paged KV cache: one pool of fixed-size blocks shared by every sequence. Per layer, one
//! buffer for K and one for V, each `[blocks][kv_heads][BLOCK_TOKENS][head_dim]`, in f32, f16 or
//! bf16 (the attention kernels widen to f32 in registers). A sequence owns a block table (logical
//! block -> physical block); which blocks are free, shared or cached is the block manager's
//! business ([`crate::serve::block_manager`]), this is only the storage.
use half::{bf16, f16};
use nano_qwen3_kernels::attention::{KvElem, KvPages};
use serde::{Deserialize, Serialize};

/// Tokens per block.
pub const BLOCK_TOKENS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    pub const VARIANTS: [KvDtype; 3] = [Self::F32, Self::F16, Self::Bf16];

    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }
}

/// One layer's K or V storage.
pub enum KvBuf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl KvBuf {
    /// Zeroed storage: the allocator maps it lazily, so untouched blocks cost no resident memory.
    fn zeroed(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F32 => KvBuf::F32(vec![0.0; len]),
            KvDtype::F16 => KvBuf::F16(zeroed_halves(len)),
            KvDtype::Bf16 => KvBuf::Bf16(zeroed_halves(len)),
        }
    }
}

/// `len` zero halves from the allocator's zeroed pages (`vec![f16::ZERO; n]` would write, and so
/// map, every page: Vec only asks for zeroed memory for primitive types).
fn zeroed_halves<T: Half>(len: usize) -> Vec<T> {
    let mut bits = std::mem::ManuallyDrop::new(vec![0u16; len]);
    // SAFETY: f16 and bf16 are `repr(transparent)` over u16 (same size and alignment) and the
    // all-zero bit pattern is +0.0 in both; the buffer's ownership moves to the new Vec.
    unsafe { Vec::from_raw_parts(bits.as_mut_ptr() as *mut T, bits.len(), bits.capacity()) }
}

/// The 16-bit KV element types.
trait Half {}
impl Half for f16 {}
impl Half for bf16 {}

/// Where one sequence's new tokens go: positions `start..start + n` through `table`.
#[derive(Clone, Copy)]
pub struct Slots<'a> {
    pub table: &'a [u32],
    pub start: usize,
}

pub struct KvPool {
    layers: Vec<(KvBuf, KvBuf)>,
    kv_heads: usize,
    head_dim: usize,
}

impl KvPool {
    /// A pool of `blocks` blocks for a model of `layers` layers.
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, dtype: KvDtype, blocks: usize) -> Self {
        let len = blocks * kv_heads * BLOCK_TOKENS * head_dim;
        Self { layers: (0..layers).map(|_| (KvBuf::zeroed(dtype, len), KvBuf::zeroed(dtype, len))).collect(), kv_heads, head_dim }
    }

    /// Bytes of one block across all layers, K and V.
    pub fn block_bytes(layers: usize, kv_heads: usize, head_dim: usize, dtype: KvDtype) -> usize {
        2 * layers * kv_heads * BLOCK_TOKENS * head_dim * dtype.size()
    }

    /// The layout the attention kernels read a sequence's keys through.
    pub fn pages<'a>(&self, table: &'a [u32]) -> KvPages<'a> {
        let head_stride = BLOCK_TOKENS * self.head_dim;
        KvPages { table, block_len: BLOCK_TOKENS, block_stride: self.kv_heads * head_stride, head_stride }
    }

    /// Write the K and V rows of `n` new tokens (token-major, row stride `stride`) of `layer` at
    /// the slots' positions. The table must cover `start + n` tokens.
    pub fn write(&mut self, layer: usize, at: Slots, k: &[f32], v: &[f32], n: usize, stride: usize) {
        assert!(at.table.len() * BLOCK_TOKENS >= at.start + n, "kv pool: block table too short for {} tokens", at.start + n);
        let (heads, hd) = (self.kv_heads, self.head_dim);
        let pages = self.pages(at.table);
        let (kb, vb) = &mut self.layers[layer];
        for (buf, rows) in [(kb, k), (vb, v)] {
            match buf {
                KvBuf::F32(b) => scatter(b, &pages, heads, hd, at.start, rows, n, stride),
                KvBuf::F16(b) => scatter(b, &pages, heads, hd, at.start, rows, n, stride),
                KvBuf::Bf16(b) => scatter(b, &pages, heads, hd, at.start, rows, n, stride),
            }
        }
    }

    pub fn layer(&self, layer: usize) -> &(KvBuf, KvBuf) {
        &self.layers[layer]
    }
}

/// Scatter token-major rows (`n` rows of `heads * hd` values, row stride `stride`) into the pool at
/// positions `at..at + n` of the sequence, rounding to the element type to nearest.
#[allow(clippy::too_many_arguments)]
fn scatter<T: KvElem>(buf: &mut [T], pages: &KvPages, heads: usize, hd: usize, at: usize, rows: &[f32], n: usize, stride: usize) {
    for t in 0..n {
        let row = &rows[t * stride..][..heads * hd];
        for h in 0..heads {
            let dst = &mut buf[pages.offset(h, at + t, hd)..][..hd];
            for (d, s) in dst.iter_mut().zip(&row[h * hd..(h + 1) * hd]) {
                *d = T::from_f32(*s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bf16 by hand: round the dropped 16 bits to nearest, ties to even; NaN stays NaN.
    fn bf16_rne(x: f32) -> u16 {
        let b = x.to_bits();
        if x.is_nan() {
            return ((b >> 16) | 0x40) as u16;
        }
        ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
    }

    /// An f16 bit pattern's value, decoded by hand.
    fn f16_value(h: u16) -> f64 {
        let (sign, exp, man) = (if h >> 15 == 1 { -1.0 } else { 1.0 }, (h >> 10) & 31, (h & 1023) as f64);
        sign * match exp {
            0 => man * 2f64.powi(-24),
            31 => f64::INFINITY,
            e => (1024.0 + man) * 2f64.powi(e as i32 - 25),
        }
    }

    /// f16 by hand: the nearest of all finite f16 values, ties to the even pattern; past the
    /// largest (65504) by half an ulp or more, infinity.
    fn f16_rne(x: f32) -> u16 {
        let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
        let a = (x as f64).abs();
        if a >= 65520.0 {
            return sign | 0x7C00;
        }
        let (mut best, mut best_err) = (0u16, f64::INFINITY);
        for h in 0..0x7C00u16 {
            let err = (f16_value(h) - a).abs();
            if err < best_err || (err == best_err && h & 1 == 0) {
                (best, best_err) = (h, err);
            }
        }
        sign | best
    }

    /// Values where rounding rules differ: ties (even and odd), just off ties, subnormals of both
    /// types, the largest finite values and past them, infinities, zeros of both signs.
    fn sweep() -> Vec<f32> {
        let mut v = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 1e-45, 65504.0, 65519.0, 65520.0, 65536.0, 6e-8, 3e-8, 2.98e-8, -5.96e-8, 1.0e-5];
        for base in [1.0f32, 1.5, -3.0, 1000.0, 0.1] {
            let b = base.to_bits();
            for off in [0x7FFF, 0x8000, 0x8001, 0x18000, 0x0FFF, 0x1000, 0x1001, 0x3000] {
                v.push(f32::from_bits(b + off));
            }
        }
        // f16 ties: halfway between neighbours (1 + k/1024 + 1/2048) for even and odd k.
        for k in [0.0f32, 1.0, 2.0, 3.0, 1023.0] {
            v.push(1.0 + k / 1024.0 + 1.0 / 2048.0);
            v.push(-(1.0 + k / 1024.0 + 1.0 / 2048.0) * 4.0);
        }
        v
    }

    #[test]
    fn sizes_are_whole_blocks_of_k_and_v() {
        assert_eq!(KvDtype::VARIANTS.map(|d| d.size()), [4, 2, 2]);
        // 2 (K, V) x 3 layers x 2 heads x 16 tokens x 8 dims x 2 bytes.
        assert_eq!(KvPool::block_bytes(3, 2, 8, KvDtype::F16), 2 * 3 * 2 * 16 * 8 * 2);
        assert_eq!(KvPool::block_bytes(5, 3, 7, KvDtype::F32), 2 * 5 * 3 * 16 * 7 * 4);
    }

    /// Rows land where the block table says, laid out `[block][head][token][dim]`: 20 tokens over
    /// two blocks in a shuffled table, 2 heads, padded input rows, from a start inside a block.
    #[test]
    fn rows_are_scattered_to_their_block_head_and_position() {
        let (heads, hd, stride, start, n) = (2, 4, 2 * 4 + 3, 5, 20);
        let table = [2u32, 0];
        let value = |t: usize, h: usize, d: usize| (t * 100 + h * 10 + d) as f32;
        let rows: Vec<f32> = (0..n).flat_map(|t| (0..stride).map(move |c| if c < heads * hd { value(start + t, c / hd, c % hd) } else { f32::NAN })).collect();
        let mut pool = KvPool::new(1, heads, hd, KvDtype::F32, 3);
        pool.write(0, Slots { table: &table, start }, &rows, &rows, n, stride);
        let KvBuf::F32(buf) = &pool.layer(0).0 else { unreachable!() };
        for t in start..start + n {
            for h in 0..heads {
                for d in 0..hd {
                    let at = table[t / BLOCK_TOKENS] as usize * heads * BLOCK_TOKENS * hd + h * BLOCK_TOKENS * hd + (t % BLOCK_TOKENS) * hd + d;
                    assert_eq!(buf[at], value(t, h, d), "token {t} head {h} dim {d}");
                    assert_eq!(pool.pages(&table).offset(h, t, hd) + d, at);
                }
            }
        }
        // Nothing else was written (the padding columns and the unused block stay zero).
        assert_eq!(buf.iter().filter(|x| **x != 0.0).count(), n * heads * hd); // every value written is >= 500
    }

    #[test]
    fn kv_elements_round_to_nearest_even_bit_for_bit() {
        let values = sweep();
        let hd = values.len();
        for dtype in [KvDtype::F16, KvDtype::Bf16] {
            let mut pool = KvPool::new(1, 1, hd, dtype, 1);
            pool.write(0, Slots { table: &[0], start: 0 }, &values, &values, 1, hd);
            let got: Vec<u16> = match &pool.layer(0).0 {
                KvBuf::F16(b) => b[..hd].iter().map(|x| x.to_bits()).collect(),
                KvBuf::Bf16(b) => b[..hd].iter().map(|x| x.to_bits()).collect(),
                KvBuf::F32(_) => unreachable!(),
            };
            for (x, g) in values.iter().zip(got) {
                let want = if dtype == KvDtype::F16 { f16_rne(*x) } else { bf16_rne(*x) };
                assert_eq!(g, want, "{dtype:?}: {x:e} ({:#010x}) stored as {g:#06x}, round-to-nearest-even is {want:#06x}", x.to_bits());
            }
        }
    }
}
