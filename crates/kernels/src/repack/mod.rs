//! Q8_0 / Q4_0 weights repacked at load into 8-row interleaved blocks (`useChannelsLast`).
//!
//! The row-major kernels ([`crate::q8`], [`crate::q4`]) compute one weight row per 256-bit vector:
//! every (row, block) costs a load, the integer products, a horizontal sum and its own scalar f16
//! scale. Here 8 output rows share every vector instead: one vector holds the same 4 consecutive
//! k-elements of 8 rows (4 bytes per 32-bit lane), so with the 4 matching activation bytes
//! broadcast to all lanes, `maddubs` + `madd` leave one i32 per lane = one partial dot product per
//! row. After a block's 8 such groups of 4, one convert and one FMA with the 8 row scales (8 f16
//! widened by one F16C instruction) finish the block for 8 rows at once, and the accumulator vector is the 8
//! outputs: no horizontal sums at all.
//!
//! Layouts, per group of 8 weight rows `8g..8g+8` (the last group padded with zero rows) and per
//! block `b` of 32 input features; blocks are stored `[group][block]`, so a group is contiguous:
//!
//! - [`BlockQ8x8`] (272 bytes = 34 per row-block, as Q8_0): `d[r]` (f16) is row r's scale,
//!   then `qs[32 s + 4 r + e]` = row r's int8 element `4 s + e` of the block (s: 0..8, e: 0..4).
//! - [`Q4x8Matrix`], per scale group: the 8 rows' f16 scales, then for each of its blocks 128
//!   bytes `qs[32 v + 4 r + e]` = row r's Q4_0 byte `4 v + e` (v: 0..4), untouched: its low
//!   nibble is element `4 v + e`, its high nibble element `16 + 4 v + e`. So one 32-byte load
//!   yields two groups of 4 elements for 8 rows: `& 0xF` and `>> 4 & 0xF`. A scale group is 1
//!   block (Q4_0: 144 bytes = 18 per row-block), or 2 or 4 blocks when the source's consecutive
//!   blocks share their scale (int4 groups of 64 / 128: 17 / 16.5 bytes per row-block).
//!
//! Both hold exactly the source's values, rearranged, so [`Q8x8Matrix::to_q8`] /
//! [`Q4x8Matrix::to_q4`] restore the original blocks bit for bit (GGUF export).
//!
//! Arithmetic is the row-major kernels' own: activations quantized per row to Q8_0 (or with the
//! static scales), exact integer block sums, `acc += sum as f32 * (d_x * d_w)` block by block. The
//! portable path gives bit-identical results to `Q8Matrix` / `Q4Matrix` with `Isa::Portable`.
//!
//! Integer tricks on AVX2 (no VNNI):
//! - Q8: `maddubs` needs one unsigned operand: `|x|` times `w` carrying x's sign (as in `q8`).
//!   Pair sums are at most 2·127·128, so they fit i16; each group of 4 is widened to i32 by `madd`.
//!   As in `q8`, a weight of -128 (never produced by Q8_0 quantizers) is not supported.
//! - Q4: nibbles are unsigned (0..15), so `maddubs(q, x)` needs no sign trick and the `-8` offset
//!   becomes `- 8 Σx` once per block. Pair sums are at most 2·15·128 = 3840, so all 8 groups of a
//!   block add up in i16 (8·3840 < 32767) before a single `madd` per block.
use crate::pool::OutPtr;
use crate::q4::{BlockQ4, Q4Matrix, QK4};
use crate::q8::{with_quantized, BlockQ8, Q8Matrix, QK8};
use crate::quant::{swiglu_unfused, QuantMatrix};
use crate::scratch::with_buffer;
use crate::simd::Isa;
use crate::tiling::{Epilogue, Split, Tile};
use crate::tuning::Tiling;
use half::f16;
use rayon::prelude::*;
use std::cell::Cell;
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

/// `$tile::<MR>(args)` for a register tile of `mr` (1..=4) activation rows; with `[GB]`,
/// `$tile::<MR, GB>` (int4: blocks per shared scale, a constant so the tile's loops are static).
/// `wide` instead allows up to [`MR_WIDE`] rows (the AVX-512 tiles, which have 32 registers).
macro_rules! by_rows {
    (wide $($tile:ident)::+ $([$gb:expr])?, $mr:expr, $($arg:expr),*) => {
        match $mr {
            1 => $($tile)::+::<1 $(, $gb)?>($($arg),*),
            2 => $($tile)::+::<2 $(, $gb)?>($($arg),*),
            3 => $($tile)::+::<3 $(, $gb)?>($($arg),*),
            4 => $($tile)::+::<4 $(, $gb)?>($($arg),*),
            5 => $($tile)::+::<5 $(, $gb)?>($($arg),*),
            6 => $($tile)::+::<6 $(, $gb)?>($($arg),*),
            7 => $($tile)::+::<7 $(, $gb)?>($($arg),*),
            _ => $($tile)::+::<8 $(, $gb)?>($($arg),*),
        }
    };
    ($($tile:ident)::+ $([$gb:expr])?, $mr:expr, $($arg:expr),*) => {
        match $mr {
            1 => $($tile)::+::<1 $(, $gb)?>($($arg),*),
            2 => $($tile)::+::<2 $(, $gb)?>($($arg),*),
            3 => $($tile)::+::<3 $(, $gb)?>($($arg),*),
            _ => $($tile)::+::<4 $(, $gb)?>($($arg),*),
        }
    };
}

/// [`by_rows!`] for the int4 tiles, also dispatching the matrix's blocks per scale (1, 2 or 4).
macro_rules! by_rows_and_groups {
    (wide $($tile:ident)::+, $mr:expr, $gb:expr, $($arg:expr),*) => {
        match $gb {
            1 => by_rows!(wide $($tile)::+ [1], $mr, $($arg),*),
            2 => by_rows!(wide $($tile)::+ [2], $mr, $($arg),*),
            _ => by_rows!(wide $($tile)::+ [4], $mr, $($arg),*),
        }
    };
    ($($tile:ident)::+, $mr:expr, $gb:expr, $($arg:expr),*) => {
        match $gb {
            1 => by_rows!($($tile)::+ [1], $mr, $($arg),*),
            2 => by_rows!($($tile)::+ [2], $mr, $($arg),*),
            _ => by_rows!($($tile)::+ [4], $mr, $($arg),*),
        }
    };
}

/// Weight rows interleaved per block.
pub const ROWS: usize = 8;

/// 8 rows x 32 int8 weights, see the module docs. The f16 scales keep it exactly as large as the
/// 8 Q8_0 blocks it replaces (one F16C instruction widens all 8).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8x8 {
    pub d: [f16; ROWS],
    pub qs: [i8; ROWS * QK8],
}

/// 8 rows x 32 4-bit weights' nibbles, see the module docs.
pub type NibblesX8 = [u8; ROWS * QK4 / 2];

const _: () = assert!(std::mem::size_of::<BlockQ8x8>() == 8 * 34);

/// A `[n, k]` Q8_0 matrix in 8-row interleaved blocks.
pub struct Q8x8Matrix {
    pub n: usize,
    pub k: usize,
    /// `n.div_ceil(8) * k / 32` blocks, `[group][block]`.
    pub blocks: Vec<BlockQ8x8>,
    /// Static activation scales, as [`Q8Matrix::act_scales`].
    pub act_scales: Option<Vec<f32>>,
}

/// A `[n, k]` Q4_0 matrix in 8-row interleaved blocks.
pub struct Q4x8Matrix {
    pub n: usize,
    pub k: usize,
    /// Consecutive blocks sharing one scale: 1, 2 or 4.
    pub group_blocks: usize,
    /// `[group][scale group]`, each the 8 rows' f16 scales (bits) then `group_blocks` blocks of
    /// nibbles (64 u16 = 128 bytes each): a scale next to the nibbles it scales, as in Q4_0.
    pub data: Vec<u16>,
}

/// One 8-row group of a [`Q4x8Matrix`], as the tiles read it: scale groups of
/// `8 + 64 GB` u16 from `p` (GB, the blocks per scale, is the tiles' const parameter).
#[derive(Clone, Copy)]
struct Q4Rows {
    p: *const u16,
    group_blocks: usize,
}

/// u16 units per scale group of `gb` blocks.
const fn q4_unit(gb: usize) -> usize {
    ROWS + 64 * gb
}

impl Q8x8Matrix {
    pub fn from_q8(q: &Q8Matrix) -> Self {
        let bpr = q.k / QK8;
        let zero = BlockQ8x8 { d: [f16::ZERO; ROWS], qs: [0; ROWS * QK8] };
        let mut blocks = vec![zero; q.n.div_ceil(ROWS) * bpr];
        // One group (8 source rows) per task: load time matters for the 150k-row lm_head.
        blocks.par_chunks_mut(bpr.max(1)).enumerate().for_each(|(g, out)| {
            for r in 0..ROWS.min(q.n - g * ROWS) {
                let src = &q.blocks[(g * ROWS + r) * bpr..][..bpr];
                for (o, s) in out.iter_mut().zip(src) {
                    o.d[r] = s.d;
                    for sg in 0..QK8 / 4 {
                        o.qs[32 * sg + 4 * r..][..4].copy_from_slice(&s.qs[4 * sg..][..4]);
                    }
                }
            }
        });
        Self { n: q.n, k: q.k, blocks, act_scales: q.act_scales.clone() }
    }

    /// The row-major Q8_0 matrix back, bit for bit.
    pub fn to_q8(&self) -> Q8Matrix {
        let bpr = self.k / QK8;
        let mut blocks = Vec::with_capacity(self.n * bpr);
        for j in 0..self.n {
            let (g, r) = (j / ROWS, j % ROWS);
            for s in &self.blocks[g * bpr..][..bpr] {
                let mut qs = [0i8; QK8];
                for sg in 0..QK8 / 4 {
                    qs[4 * sg..][..4].copy_from_slice(&s.qs[32 * sg + 4 * r..][..4]);
                }
                blocks.push(BlockQ8 { d: s.d[r], qs });
            }
        }
        Q8Matrix { n: self.n, k: self.k, blocks, act_scales: self.act_scales.clone() }
    }
}

impl Q4x8Matrix {
    /// Repack, storing each scale once per group of blocks that share it (see the module docs).
    pub fn from_q4(q: &Q4Matrix) -> Self {
        let (bpr, gb) = (q.k / QK4, q.shared_scale_blocks());
        let per_group = bpr / gb * q4_unit(gb);
        // Padding rows: scale 0 and nibbles 8 (= 0), so they hold exact zeros.
        let mut data = vec![0x8888u16; q.n.div_ceil(ROWS) * per_group];
        data.par_chunks_mut(per_group.max(1)).enumerate().for_each(|(g, out)| {
            for sg in out.chunks_exact_mut(q4_unit(gb)) {
                sg[..ROWS].fill(0);
            }
            for r in 0..ROWS.min(q.n - g * ROWS) {
                for (b, s) in q.blocks[(g * ROWS + r) * bpr..][..bpr].iter().enumerate() {
                    let at = b / gb * q4_unit(gb);
                    out[at + r] = s.d.to_bits();
                    let nib = &mut out[at + ROWS + 64 * (b % gb)..][..64];
                    // SAFETY: 64 u16 are 128 bytes.
                    let nib: &mut NibblesX8 = unsafe { &mut *(nib.as_mut_ptr() as *mut NibblesX8) };
                    for v in 0..4 {
                        nib[32 * v + 4 * r..][..4].copy_from_slice(&s.qs[4 * v..][..4]);
                    }
                }
            }
        });
        Self { n: q.n, k: q.k, group_blocks: gb, data }
    }

    /// Row group `g`'s scale and nibbles of block `b`.
    fn block(&self, g: usize, b: usize) -> (&[u16], &NibblesX8) {
        let (bpr, gb) = (self.k / QK4, self.group_blocks);
        let at = g * (bpr / gb * q4_unit(gb)) + b / gb * q4_unit(gb);
        let nib = &self.data[at + ROWS + 64 * (b % gb)..][..64];
        // SAFETY: 64 u16 are 128 bytes.
        (&self.data[at..at + ROWS], unsafe { &*(nib.as_ptr() as *const NibblesX8) })
    }

    /// The row-major Q4_0 matrix back, bit for bit (a shared scale repeated in each block).
    pub fn to_q4(&self) -> Q4Matrix {
        let bpr = self.k / QK4;
        let mut blocks = Vec::with_capacity(self.n * bpr);
        for j in 0..self.n {
            let (g, r) = (j / ROWS, j % ROWS);
            for b in 0..bpr {
                let (d, s) = self.block(g, b);
                let mut qs = [0u8; QK4 / 2];
                for v in 0..4 {
                    qs[4 * v..][..4].copy_from_slice(&s[32 * v + 4 * r..][..4]);
                }
                blocks.push(BlockQ4 { d: f16::from_bits(d[r]), qs });
            }
        }
        Q4Matrix { n: self.n, k: self.k, blocks }
    }

    /// The tiles' view of 8-row group `g`.
    fn rows(&self, g: usize) -> Q4Rows {
        let (bpr, gb) = (self.k / QK4, self.group_blocks);
        // SAFETY (callers): g < n.div_ceil(8), so the offset is in bounds.
        Q4Rows { p: unsafe { self.data.as_ptr().add(g * (bpr / gb * q4_unit(gb))) }, group_blocks: gb }
    }
}

/// One activation block for the Q8 kernels: the int8 values, their absolute values (AVX2's
/// unsigned `maddubs` operand, computed once per call instead of once per weight group), the scale
/// and `128 Σ qs` (VNNI's offset for weights made unsigned).
#[repr(C)]
#[derive(Clone, Copy)]
struct XQ8 {
    qs: [i8; QK8],
    abs: [u8; QK8],
    d: f32,
    sum128: i32,
}

/// One activation block for the Q4 kernels: values, scale and `8 Σ qs` (the nibbles' offset).
#[repr(C)]
#[derive(Clone, Copy)]
struct XQ4 {
    qs: [i8; QK8],
    d: f32,
    sum8: i32,
}

thread_local! {
    static XQ8_BUF: Cell<Vec<XQ8>> = const { Cell::new(Vec::new()) };
    static XQ4_BUF: Cell<Vec<XQ4>> = const { Cell::new(Vec::new()) };
}

/// `x` quantized and laid out for the Q8 kernels, in this thread's reusable buffer.
fn with_prepared_q8<R>(x: &[f32], k: usize, scales: Option<&[f32]>, f: impl FnOnce(&[XQ8]) -> R) -> R {
    let zero = XQ8 { qs: [0; QK8], abs: [0; QK8], d: 0.0, sum128: 0 };
    with_quantized(x, k, scales, |xq| {
        with_buffer(&XQ8_BUF, xq.len(), zero, |out| {
            for (o, b) in out.iter_mut().zip(xq) {
                let sum128 = 128 * b.qs.iter().map(|&q| q as i32).sum::<i32>();
                *o = XQ8 { qs: b.qs, abs: b.qs.map(|q| q.unsigned_abs()), d: b.d.to_f32(), sum128 };
            }
            f(out)
        })
    })
}

/// `x` quantized and laid out for the Q4 kernels, in this thread's reusable buffer.
fn with_prepared_q4<R>(x: &[f32], k: usize, f: impl FnOnce(&[XQ4]) -> R) -> R {
    let zero = XQ4 { qs: [0; QK8], d: 0.0, sum8: 0 };
    with_quantized(x, k, None, |xq| {
        with_buffer(&XQ4_BUF, xq.len(), zero, |out| {
            for (o, b) in out.iter_mut().zip(xq) {
                *o = XQ4 { qs: b.qs, d: b.d.to_f32(), sum8: 8 * b.qs.iter().map(|&q| q as i32).sum::<i32>() };
            }
            f(out)
        })
    })
}

impl QuantMatrix for Q8x8Matrix {
    fn name(&self) -> &'static str {
        "nano-qwen3-q8x8-linear"
    }

    fn n(&self) -> usize {
        self.n
    }

    fn k(&self) -> usize {
        self.k
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<BlockQ8x8>()
    }

    fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let bpr = self.k / QK8;
        let (g, r) = (j / ROWS, j % ROWS);
        for (b, chunk) in self.blocks[g * bpr..][..bpr].iter().zip(out.chunks_exact_mut(QK8)) {
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = b.qs[32 * (i / 4) + 4 * r + i % 4] as f32 * b.d[r].to_f32();
            }
        }
    }

    fn linear(&self, x: &[f32], m: usize, y: &mut [f32], isa: Isa) {
        self.run(x, m, y, None, isa)
    }

    fn linear_swiglu(&self, x: &[f32], m: usize, gu: &mut [f32], act: &mut [f32], isa: Isa) {
        if self.n % (2 * ROWS) != 0 {
            return swiglu_unfused(self, x, m, gu, act, isa);
        }
        self.run(x, m, gu, Some(act), isa)
    }
}

impl Q8x8Matrix {
    /// `linear`, with the SwiGLU epilogue when `act` is given (see [`drive`]).
    fn run(&self, x: &[f32], m: usize, y: &mut [f32], act: Option<&mut [f32]>, isa: Isa) {
        let (n, k, bpr) = (self.n, self.k, self.k / QK8);
        assert!(x.len() >= m * k && y.len() >= m * n, "q8x8 linear: buffers too small");
        with_prepared_q8(&x[..m * k], k, self.act_scales.as_deref(), |xq| {
            drive(self.name(), m, n, k, y, act, isa.uses_vnni(), false, |t| unsafe {
                let (x, w, mr, out) = (xq.as_ptr().add(t.i * bpr), self.blocks.as_ptr().add(t.j * bpr), t.mr, t.y);
                let cols = (n - t.j * ROWS).min(ROWS);
                #[cfg(target_arch = "x86_64")]
                if isa.uses_vnni() {
                    return by_rows!(wide avx512::q8_tile, mr, x, w, bpr, out, n, cols);
                }
                #[cfg(target_arch = "x86_64")]
                if isa.uses_avx2() {
                    return by_rows!(avx2::q8_tile, mr, x, w, bpr, out, n, cols);
                }
                #[cfg(target_arch = "aarch64")]
                if isa == Isa::NeonDotprod {
                    return by_rows!(neon::q8_tile, mr, x, w, bpr, out, n, cols);
                }
                let _ = isa;
                for a in 0..mr {
                    let acc = portable_q8(x.add(a * bpr), w, bpr);
                    std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(a * n), cols);
                }
            })
        })
    }
}

impl QuantMatrix for Q4x8Matrix {
    fn name(&self) -> &'static str {
        "nano-qwen3-q4x8-linear"
    }

    fn n(&self) -> usize {
        self.n
    }

    fn k(&self) -> usize {
        self.k
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val(&self.data[..])
    }

    fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let (g, r) = (j / ROWS, j % ROWS);
        for (b, chunk) in out.chunks_exact_mut(QK4).enumerate() {
            let (d, q) = self.block(g, b);
            let d = f16::from_bits(d[r]).to_f32();
            for i in 0..16 {
                let q = q[32 * (i / 4) + 4 * r + i % 4];
                chunk[i] = ((q & 0xF) as i32 - 8) as f32 * d;
                chunk[i + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
    }

    /// x is quantized to int8 blocks per row at run time (as [`Q4Matrix`]).
    fn linear(&self, x: &[f32], m: usize, y: &mut [f32], isa: Isa) {
        self.run(x, m, y, None, isa)
    }

    fn linear_swiglu(&self, x: &[f32], m: usize, gu: &mut [f32], act: &mut [f32], isa: Isa) {
        if self.n % (2 * ROWS) != 0 {
            return swiglu_unfused(self, x, m, gu, act, isa);
        }
        self.run(x, m, gu, Some(act), isa)
    }
}

impl Q4x8Matrix {
    /// `linear`, with the SwiGLU epilogue when `act` is given (see [`drive`]).
    fn run(&self, x: &[f32], m: usize, y: &mut [f32], act: Option<&mut [f32]>, isa: Isa) {
        let (n, k, bpr) = (self.n, self.k, self.k / QK4);
        assert!(x.len() >= m * k && y.len() >= m * n, "q4x8 linear: buffers too small");
        with_prepared_q4(&x[..m * k], k, |xq| {
            drive(self.name(), m, n, k, y, act, isa.uses_vnni(), false, |t| unsafe {
                let (x, w, mr, out) = (xq.as_ptr().add(t.i * bpr), self.rows(t.j), t.mr, t.y);
                let cols = (n - t.j * ROWS).min(ROWS);
                #[cfg(target_arch = "x86_64")]
                if isa.uses_vnni() {
                    return by_rows_and_groups!(wide avx512::q4_tile, mr, w.group_blocks, x, w, bpr, out, n, cols);
                }
                #[cfg(target_arch = "x86_64")]
                if isa.uses_avx2() {
                    return by_rows_and_groups!(avx2::q4_tile, mr, w.group_blocks, x, w, bpr, out, n, cols);
                }
                #[cfg(target_arch = "aarch64")]
                if isa == Isa::NeonDotprod {
                    return by_rows_and_groups!(neon::q4_tile, mr, w.group_blocks, x, w, bpr, out, n, cols);
                }
                let _ = isa;
                for a in 0..mr {
                    let acc = portable_q4(x.add(a * bpr), w, bpr);
                    std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(a * n), cols);
                }
            })
        })
    }
}

/// Plain Rust reference for one activation row by one 8-row group; the same operations in the
/// same order as the `q8` portable dot, hence the same bits.
unsafe fn portable_q8(x: *const XQ8, w: *const BlockQ8x8, blocks: usize) -> [f32; ROWS] {
    let mut acc = [0f32; ROWS];
    for b in 0..blocks {
        let (xb, wb) = (&*x.add(b), &*w.add(b));
        for (r, a) in acc.iter_mut().enumerate() {
            let mut s = 0i32;
            for (i, &q) in xb.qs.iter().enumerate() {
                s += q as i32 * wb.qs[32 * (i / 4) + 4 * r + i % 4] as i32;
            }
            *a += s as f32 * (xb.d * wb.d[r].to_f32());
        }
    }
    acc
}

/// Plain Rust reference for Q4 (as the `q4` portable dot, a shared scale read once per group).
unsafe fn portable_q4(x: *const XQ4, w: Q4Rows, blocks: usize) -> [f32; ROWS] {
    let mut acc = [0f32; ROWS];
    for b in 0..blocks {
        let gb = w.group_blocks;
        let group = w.p.add(b / gb * q4_unit(gb));
        let (xb, qs, d) = (&*x.add(b), &*(group.add(ROWS + 64 * (b % gb)) as *const NibblesX8), &*(group as *const [f16; ROWS]));
        for (r, a) in acc.iter_mut().enumerate() {
            let mut s = 0i32;
            for i in 0..16 {
                let q = qs[32 * (i / 4) + 4 * r + i % 4];
                s += xb.qs[i] as i32 * ((q & 0xF) as i32 - 8);
                s += xb.qs[i + 16] as i32 * ((q >> 4) as i32 - 8);
            }
            *a += s as f32 * (xb.d * d[r].to_f32());
        }
    }
    acc
}

/// Activation rows per register tile (prefill and batched decode): 4 i32 sums, 4 f32 accumulators,
/// the weight vector, constants and temporaries fill the 16 ymm registers.
const MR: usize = 4;
/// The AVX-512 tiles' rows (32 registers): 8 independent `vpdpbusd` chains hide its latency,
/// where 4 chains leave the unit idle half the time, and each weight vector feeds 8 rows.
const MR_WIDE: usize = 8;
/// 8 tasks per thread; activation rows kept hot in L2 while a task sweeps its weight groups
/// (multiple of MR): 32 rows of k = 3072 are 200 KB of prepared Q8 activations.
pub const DEFAULT_TILING: Tiling = Tiling { tasks_per_thread: 8, m_block: 32 };

/// The repacked split ([`crate::tiling`]): one 8-row group per unit, `tile(t)` computing rows
/// `t.i..t.i + t.mr` of group `t.j` into `y[t.i.., 8 t.j..]`.
/// (Two groups per tile for decode, sharing each activation broadcast, measured no faster.)
///
/// With `act` (SwiGLU epilogue; rows stacked `[gate; up]`, `n = 2 inter`, `inter % 8 == 0`), a
/// task takes gate group `g` together with up group `g + inter / 8`, and after each row block
/// writes `act[i, j] = silu(y[i, j]) * y[i, inter + j]` for its columns, while they are in cache.
/// `wide`: tiles of up to [`MR_WIDE`] rows instead of [`MR`]; `two_groups`: tiles of up to 2
/// groups (`t.nr` 1 or 2; the 512-bit GGUF-block tiles), of up to [`MR`] rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn drive(
    kernel: &'static str,
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    act: Option<&mut [f32]>,
    wide: bool,
    two_groups: bool,
    tile: impl Fn(Tile) + Sync,
) {
    let groups = n.div_ceil(ROWS);
    let inter = n / 2;
    assert!(act.as_ref().is_none_or(|a| n % (2 * ROWS) == 0 && a.len() >= m * inter), "swiglu epilogue: n = {n}");
    let units = if act.is_some() { groups / 2 } else { groups };
    let split = Split { kernel, m, n, k, units, default: DEFAULT_TILING };
    let act = act.map(OutPtr::new);
    let swiglu = |groups: Range<usize>, rows: Range<usize>, y: OutPtr| {
        let act = act.expect("the epilogue runs with act");
        let cols = groups.start * ROWS..groups.end * ROWS;
        for i in rows {
            // SAFETY: this task alone wrote (and now reads) these gate and up columns of row i,
            // and alone writes the same columns of act.
            let (gu, a) = unsafe {
                (std::slice::from_raw_parts(y.get().add(i * n), n), std::slice::from_raw_parts_mut(act.get().add(i * inter), inter))
            };
            crate::fused::silu_mul_into(&gu[cols.clone()], &gu[inter + cols.start..inter + cols.end], &mut a[cols.clone()]);
        }
    };
    let epilogue = act.is_some().then_some(Epilogue { pair: groups / 2, f: &swiglu });
    if two_groups {
        crate::tiling::drive::<MR, 2, ROWS>(&split, y, epilogue, tile)
    } else if wide {
        crate::tiling::drive::<MR_WIDE, 1, ROWS>(&split, y, epilogue, tile)
    } else {
        crate::tiling::drive::<MR, 1, ROWS>(&split, y, epilogue, tile)
    }
}

#[cfg(test)]
mod tests;
