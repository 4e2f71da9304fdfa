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
//! - Q8: `maddubs` needs one unsigned operand: `|x|` times `w` carrying x's sign (as q8.rs). Pair
//!   sums are at most 2·127·128, so they fit i16; each group of 4 is widened to i32 by `madd`.
//!   As in q8.rs, a weight of -128 (never produced by Q8_0 quantizers) is not supported.
//! - Q4: nibbles are unsigned (0..15), so `maddubs(q, x)` needs no sign trick and the `-8` offset
//!   becomes `- 8 Σx` once per block. Pair sums are at most 2·15·128 = 3840, so all 8 groups of a
//!   block add up in i16 (8·3840 < 32767) before a single `madd` per block.
use crate::q4::{BlockQ4, Q4Matrix, QK4};
use crate::q8::{with_quantized, BlockQ8, Q8Matrix, QK8};
use crate::scratch::with_buffer;
use std::cell::Cell;
use crate::quant::{swiglu_unfused, QuantMatrix};
use crate::simd::Isa;
use crate::tuning::{chunk_len, tiling_for, ShapeKey, Tiling};
use half::f16;
use rayon::prelude::*;

/// `$tile::<MR>(args)` for a register tile of `mr` (1..=4) activation rows; with `[GB]`,
/// `$tile::<MR, GB>` (int4: blocks per shared scale, a constant so the tile's loops are static).
macro_rules! by_rows {
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
            drive(self.name(), m, n, k, y, act, |i, mr, g, out| unsafe {
                let (x, w) = (xq.as_ptr().add(i * bpr), self.blocks.as_ptr().add(g * bpr));
                let cols = (n - g * ROWS).min(ROWS);
                #[cfg(target_arch = "x86_64")]
                if isa.uses_vnni() {
                    return by_rows!(avx512::q8_tile, mr, x, w, bpr, out, n, cols);
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
            drive(self.name(), m, n, k, y, act, |i, mr, g, out| unsafe {
                let (x, w) = (xq.as_ptr().add(i * bpr), self.rows(g));
                let cols = (n - g * ROWS).min(ROWS);
                #[cfg(target_arch = "x86_64")]
                if isa.uses_vnni() {
                    return by_rows_and_groups!(avx512::q4_tile, mr, w.group_blocks, x, w, bpr, out, n, cols);
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
/// same order as q8.rs's portable dot, hence the same bits.
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

/// Plain Rust reference for Q4 (as q4.rs's portable dot, a shared scale read once per group).
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

/// The output pointer, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Activation rows per register tile (prefill): 4 i32 sums, 4 f32 accumulators, the weight vector,
/// constants and temporaries fill the 16 ymm registers.
const MR: usize = 4;
/// 8 tasks per thread; activation rows kept hot in L2 while a task sweeps its weight groups
/// (multiple of MR): 32 rows of k = 3072 are 200 KB of prepared Q8 activations.
pub const DEFAULT_TILING: Tiling = Tiling { tasks_per_thread: 8, m_block: 32 };

/// Split the 8-row groups over the current kernel pool; each task sweeps x in L2-sized row blocks
/// and calls `tile(i, mr, g, &mut y[i, 8 g])` for `mr` rows by one group.
/// (Two groups per tile for decode, sharing each activation broadcast, measured no faster.)
/// `kernel` and `k` name the shape for its tuned [`Tiling`] (compile mode max-autotune).
///
/// With `act` (SwiGLU epilogue; rows stacked `[gate; up]`, `n = 2 inter`, `inter % 8 == 0`), a
/// task takes gate group `g` together with up group `g + inter / 8`, and after each row block
/// writes `act[i, j] = silu(y[i, j]) * y[i, inter + j]` for its columns, while they are in cache.
fn drive(
    kernel: &'static str,
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    act: Option<&mut [f32]>,
    tile: impl Fn(usize, usize, usize, *mut f32) + Sync,
) {
    let groups = n.div_ceil(ROWS);
    let inter = n / 2;
    let (units, pair) = match act {
        Some(_) => (groups / 2, groups / 2),
        None => (groups, 0),
    };
    assert!(act.as_ref().is_none_or(|a| n % (2 * ROWS) == 0 && a.len() >= m * inter), "swiglu epilogue: n = {n}");
    let threads = crate::pool::current_threads();
    let tiling = tiling_for(ShapeKey { kernel, n, k, threads, decode: m == 1 }, DEFAULT_TILING);
    let chunk = chunk_len(units, threads, tiling, 1);
    let m_block = tiling.m_block.next_multiple_of(MR);
    let (out, act) = (OutPtr(y.as_mut_ptr()), act.map(|a| OutPtr(a.as_mut_ptr())));
    crate::pool::parallel_for(units.div_ceil(chunk), |c| {
        let (out, act) = (out, act);
        let (g0, g1) = (c * chunk, ((c + 1) * chunk).min(units));
        for i0 in (0..m).step_by(m_block) {
            let i1 = (i0 + m_block).min(m);
            for g in g0..g1 {
                for g in [g, g + pair].into_iter().take(if act.is_some() { 2 } else { 1 }) {
                    let mut i = i0;
                    while i < i1 {
                        let mr = (i1 - i).min(MR);
                        // SAFETY: in bounds (asserts in `linear`); this task alone writes its groups.
                        tile(i, mr, g, unsafe { out.0.add(i * n + g * ROWS) });
                        i += mr;
                    }
                }
            }
            if let Some(act) = act {
                for i in i0..i1 {
                    // SAFETY: this task alone wrote (and now reads) these gate and up columns of
                    // row i, and alone writes the same columns of act.
                    let (gu, a) = unsafe {
                        (std::slice::from_raw_parts(out.0.add(i * n), n), std::slice::from_raw_parts_mut(act.0.add(i * inter), inter))
                    };
                    let cols = g0 * ROWS..g1 * ROWS;
                    crate::fused::silu_mul_into(&gu[cols.clone()], &gu[inter + cols.start..inter + cols.end], &mut a[cols]);
                }
            }
        }
    });
}

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{q4_unit, BlockQ8x8, Q4Rows, QK8, XQ4, XQ8, ROWS};
    use std::arch::x86_64::*;

    /// The 4 bytes at `p` in all 8 lanes (one `vpbroadcastd` from memory).
    #[inline(always)]
    pub(super) unsafe fn bcast4<T>(p: *const T) -> __m256i {
        _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
    }

    /// Store the accumulators of `MR` rows, only the first `cols` columns (padded rows are
    /// never written).
    #[inline(always)]
    pub(super) unsafe fn store<const MR: usize>(acc: &[__m256; MR], y: *mut f32, ldy: usize, cols: usize) {
        for (i, a) in acc.iter().enumerate() {
            if cols == ROWS {
                _mm256_storeu_ps(y.add(i * ldy), *a);
            } else {
                let mut t = [0f32; ROWS];
                _mm256_storeu_ps(t.as_mut_ptr(), *a);
                std::ptr::copy_nonoverlapping(t.as_ptr(), y.add(i * ldy), cols);
            }
        }
    }

    /// `acc += s · (dw · dx)`: one convert and FMA finish a block for 8 rows (the row scales
    /// times the block's x scale). Every x86 tile ends its blocks with it, so all give these bits.
    #[inline(always)]
    pub(super) unsafe fn scale_block(acc: &mut __m256, s: __m256i, dw: __m256, dx: f32) {
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), *acc);
    }

    /// The 8 f16 row scales at `p` as f32 (one F16C instruction).
    #[inline(always)]
    pub(super) unsafe fn scales(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// `MR` activation rows by one 8-row group: each weight vector (4 elements of 8 rows) feeds MR
    /// rows. Per 32 products: sign, maddubs, madd, add, plus two broadcast loads.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_tile<const MR: usize>(x: *const XQ8, w: *const BlockQ8x8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..blocks {
            let wb = &*w.add(b);
            let mut isum = [_mm256_setzero_si256(); MR];
            for s in 0..QK8 / 4 {
                let wv = _mm256_loadu_si256(wb.qs.as_ptr().add(32 * s) as *const __m256i);
                for (i, sum) in isum.iter_mut().enumerate() {
                    let xb = x.add(i * blocks + b);
                    let xv = bcast4((*xb).qs.as_ptr().add(4 * s));
                    let ax = bcast4((*xb).abs.as_ptr().add(4 * s));
                    let p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, ones));
                }
            }
            let dw = scales(wb.d.as_ptr() as *const u16);
            for i in 0..MR {
                scale_block(&mut acc[i], isum[i], dw, (*x.add(i * blocks + b)).d);
            }
        }
        store(&acc, y, ldy, cols);
    }

    /// How an int4 tile turns unsigned nibbles times int8 activations into per-lane sums: the
    /// one step that differs between AVX2 (`maddubs`) and VNNI (`vpdpbusd`).
    pub(super) trait NibbleDot {
        /// Adds `lo · xl + hi · xh` (4 products per i32 lane of the result) into `acc`.
        unsafe fn step(acc: __m256i, lo: __m256i, hi: __m256i, xl: __m256i, xh: __m256i) -> __m256i;
        /// A block's accumulator as 8 i32 sums.
        unsafe fn widen(acc: __m256i) -> __m256i;
    }

    /// AVX2: pair sums are at most 2·15·128, so a block's 8 groups add up in i16 (see the module
    /// docs) and are widened to i32 once per block.
    pub(super) struct Maddubs;

    impl NibbleDot for Maddubs {
        #[inline(always)]
        unsafe fn step(acc: __m256i, lo: __m256i, hi: __m256i, xl: __m256i, xh: __m256i) -> __m256i {
            _mm256_add_epi16(acc, _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh)))
        }

        #[inline(always)]
        unsafe fn widen(acc: __m256i) -> __m256i {
            _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
        }
    }

    /// The int4 tile for either [`NibbleDot`]: one 32-byte load gives elements 4v..4v+4 (low
    /// nibbles) and 16+4v.. (high) of 8 rows; a scale group's scales are read once, and
    /// `Σ q·x - 8 Σ x = Σ (q - 8)·x` is taken per block, exactly. Inlined into each ISA's
    /// `#[target_feature]` entry point.
    #[inline(always)]
    pub(super) unsafe fn q4_tile_with<D: NibbleDot, const MR: usize, const GB: usize>(
        x: *const XQ4,
        w: Q4Rows,
        blocks: usize,
        y: *mut f32,
        ldy: usize,
        cols: usize,
    ) {
        let mask = _mm256_set1_epi8(0xF);
        let mut acc = [_mm256_setzero_ps(); MR];
        for sg in 0..blocks / GB {
            // The scale group's 8 scales sit before its GB blocks of nibbles.
            let group = w.p.add(sg * q4_unit(GB));
            let dw = scales(group);
            for b in sg * GB..(sg + 1) * GB {
                let qs = group.add(ROWS + 64 * (b - sg * GB)) as *const u8;
                let mut isum = [_mm256_setzero_si256(); MR];
                for v in 0..4 {
                    let p = _mm256_loadu_si256(qs.add(32 * v) as *const __m256i);
                    let lo = _mm256_and_si256(p, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), mask);
                    for (i, sum) in isum.iter_mut().enumerate() {
                        let xq = (*x.add(i * blocks + b)).qs.as_ptr();
                        *sum = D::step(*sum, lo, hi, bcast4(xq.add(4 * v)), bcast4(xq.add(16 + 4 * v)));
                    }
                }
                for i in 0..MR {
                    let xb = &*x.add(i * blocks + b);
                    scale_block(&mut acc[i], _mm256_sub_epi32(D::widen(isum[i]), _mm256_set1_epi32(xb.sum8)), dw, xb.d);
                }
            }
        }
        store(&acc, y, ldy, cols);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_tile<const MR: usize, const GB: usize>(x: *const XQ4, w: Q4Rows, blocks: usize, y: *mut f32, ldy: usize, cols: usize) {
        q4_tile_with::<Maddubs, MR, GB>(x, w, blocks, y, ldy, cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data;

    const MS: [usize; 5] = [1, 2, 3, 7, 50];
    const NS: [usize; 6] = [1, 7, 8, 9, 37, 64];
    const KS: [usize; 3] = [32, 96, 1024];

    /// Bell-shaped weights (as trained ones), so Q4 scales and nibbles take varied values.
    fn weights(len: usize, seed: u64) -> Vec<f32> {
        let [a, b, c] = [0, 1, 2].map(|i| test_data(len, seed * 3 + i));
        (0..len).map(|i| (a[i] + b[i] + c[i]) / 3.0).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    fn simd_close(simd: &[f32], portable: &[f32], what: &str) {
        for (a, b) in simd.iter().zip(portable) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: simd {a} vs portable {b}");
        }
    }

    /// Each repacked path against the row-major kernels on every shape: portable bit for bit
    /// (same integer sums, same f32 operations in the same order), AVX2 within rounding.
    fn check_all_shapes<Q: QuantMatrix, R: QuantMatrix>(ks: &[usize], make: impl Fn(&[f32], usize, usize) -> Q, repack: impl Fn(&Q) -> R) {
        for &k in ks {
            for &n in &NS {
                let q = make(&weights(n * k, (n * 7 + k) as u64), n, k);
                let r = repack(&q);
                for &m in &MS {
                    let x = test_data(m * k, (m * 13 + n) as u64);
                    let what = format!("{} m={m} n={n} k={k}", r.name());
                    // Sentinel outputs: padded rows must not write past n.
                    let (mut want, mut got) = (vec![0f32; m * n + 1], vec![f32::NAN; m * n + 1]);
                    want[m * n] = 7.0;
                    got[m * n] = 7.0;
                    q.linear(&x, m, &mut want, Isa::Portable);
                    r.linear(&x, m, &mut got, Isa::Portable);
                    assert_eq!(bits(&got), bits(&want), "{what}: portable differs from the row-major kernel");
                    for isa in Isa::simd_paths() {
                        let mut simd = vec![f32::NAN; m * n + 1];
                        simd[m * n] = 7.0;
                        r.linear(&x, m, &mut simd, isa);
                        simd_close(&simd, &want, &format!("{what} {}", isa.name()));
                        assert_eq!(simd[m * n], 7.0);
                    }
                }
            }
        }
    }

    #[test]
    fn repack_q8_matches_row_major_on_every_shape() {
        check_all_shapes(&KS, Q8Matrix::quantize, Q8x8Matrix::from_q8);
    }

    #[test]
    fn repack_q4_matches_row_major_on_every_shape() {
        check_all_shapes(&KS, Q4Matrix::quantize, Q4x8Matrix::from_q4);
    }

    /// int4 groups of 64 and 128: one scale row per group in the repacked layout, and still the
    /// row-major kernel's bits (the same scale repeated in each block there).
    #[test]
    fn repack_q4_groups_store_one_scale_per_group() {
        for (group, blocks) in [(64, 2), (128, 4)] {
            let make = |w: &[f32], n, k| Q4Matrix::quantize_grouped(w, n, k, None, group);
            check_all_shapes(&[128, 384, 1024], make, |q: &Q4Matrix| {
                let r = Q4x8Matrix::from_q4(q);
                assert_eq!(r.group_blocks, blocks);
                r
            });
            let (n, k) = (37, 1024);
            let q = make(&weights(n * k, 9), n, k);
            let r = Q4x8Matrix::from_q4(&q);
            let row_blocks = n.div_ceil(ROWS) * ROWS * k / 32;
            // 16 bytes of nibbles per row-block, 2 bytes of scale per row-group of `blocks`.
            assert_eq!(r.bytes(), row_blocks * 16 + row_blocks / blocks * 2);
            let back = r.to_q4();
            assert!(back.blocks.iter().zip(&q.blocks).all(|(a, b)| (a.d.to_bits(), a.qs) == (b.d.to_bits(), b.qs)));
            assert_eq!(bits(&r.dequantize()), bits(&q.dequantize()));
        }
    }

    /// VNNI's integer sums are exact and its f32 steps are AVX2's: the same bits, every shape.
    #[test]
    fn vnni_tiles_give_the_avx2_bits() {
        if !Isa::Avx512Vnni.supported() {
            eprintln!("no AVX-512 VNNI on this CPU: scripts/test-avx512.sh runs this test in an emulator");
            return;
        }
        for &k in &KS {
            for &n in &NS {
                let w = weights(n * k, (n * 3 + k) as u64);
                let mut mats: Vec<Box<dyn QuantMatrix>> = vec![
                    Box::new(Q8x8Matrix::from_q8(&Q8Matrix::quantize(&w, n, k))),
                    Box::new(Q8x8Matrix::from_q8(&Q8Matrix::quantize(&w, n, k).with_static_scales(vec![0.004; k / QK8]))),
                    Box::new(Q4x8Matrix::from_q4(&Q4Matrix::quantize(&w, n, k))),
                ];
                if k % 128 == 0 {
                    mats.push(Box::new(Q4x8Matrix::from_q4(&Q4Matrix::quantize_grouped(&w, n, k, None, 128))));
                }
                for &m in &MS {
                    let x = test_data(m * k, (m * 5 + n) as u64);
                    for q in &mats {
                        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
                        q.linear(&x, m, &mut a, Isa::Avx2);
                        q.linear(&x, m, &mut b, Isa::Avx512Vnni);
                        assert_eq!(bits(&b), bits(&a), "{} m={m} n={n} k={k}", q.name());
                    }
                }
            }
        }
    }

    #[test]
    fn repack_q8_static_scales_work_the_same() {
        for &(m, n, k) in &[(1usize, 37usize, 1024usize), (7, 9, 96), (50, 64, 96)] {
            let x = test_data(m * k, 21);
            // Scales for half of x's range: part of the activations saturate at ±127.
            let scales: Vec<f32> = (0..k / QK8).map(|b| 0.5 / 127.0 * (1.0 + (b % 3) as f32)).collect();
            let q = Q8Matrix::quantize(&weights(n * k, 22), n, k).with_static_scales(scales.clone());
            let r = Q8x8Matrix::from_q8(&q);
            assert_eq!(r.act_scales.as_deref(), Some(&scales[..]));
            let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
            q.linear(&x, m, &mut want, Isa::Portable);
            r.linear(&x, m, &mut got, Isa::Portable);
            assert_eq!(bits(&got), bits(&want));
            // And they are used: the dynamic matrix gives other results.
            let mut dynamic = vec![0f32; m * n];
            Q8x8Matrix::from_q8(&Q8Matrix::quantize(&weights(n * k, 22), n, k)).linear(&x, m, &mut dynamic, Isa::Portable);
            assert_ne!(bits(&dynamic), bits(&want));
            for isa in Isa::simd_paths() {
                r.linear(&x, m, &mut got, isa);
                simd_close(&got, &want, &format!("static {}", isa.name()));
            }
        }
    }

    /// Deterministic raw bytes: the round trips must hold for any block content, not just
    /// what the quantizers produce.
    fn raw_bytes(len: usize, seed: u64) -> Vec<u8> {
        test_data(len, seed).iter().map(|v| ((v + 1.0) * 128.0) as u8).collect()
    }

    fn raw_scale(i: usize, bytes: &[u8]) -> f16 {
        // Any finite f16, subnormals and negative zero included (exact through f32).
        let b = u16::from_le_bytes([bytes[i], bytes[i + 1]]) & 0x7BFF;
        if i % 5 == 0 { f16::from_bits(0x8000) } else { f16::from_bits(b | if i % 2 == 0 { 0x8000 } else { 0 }) }
    }

    #[test]
    fn repack_round_trips_are_exact() {
        for &(n, k) in &[(1usize, 32usize), (7, 64), (8, 32), (9, 96), (37, 1024), (64, 96)] {
            let bpr = k / 32;
            let raw = raw_bytes(n * bpr * 36, (n + k) as u64);
            let q8: Vec<BlockQ8> = (0..n * bpr)
                .map(|i| BlockQ8 { d: raw_scale(i * 36, &raw), qs: std::array::from_fn(|e| raw[i * 36 + 2 + e] as i8) })
                .collect();
            let q8 = Q8Matrix::from_blocks(n, k, q8).with_static_scales((0..bpr).map(|b| b as f32 * 0.01).collect());
            let back = Q8x8Matrix::from_q8(&q8).to_q8();
            assert_eq!((back.n, back.k, back.act_scales.as_ref()), (n, k, q8.act_scales.as_ref()));
            assert_eq!(back.blocks.len(), q8.blocks.len());
            for (a, b) in back.blocks.iter().zip(&q8.blocks) {
                assert_eq!((a.d.to_bits(), a.qs), (b.d.to_bits(), b.qs));
            }
            let q4 = Q4Matrix {
                n,
                k,
                blocks: (0..n * bpr)
                    .map(|i| BlockQ4 { d: raw_scale(i * 36, &raw), qs: std::array::from_fn(|e| raw[i * 36 + 2 + e]) })
                    .collect(),
            };
            let back = Q4x8Matrix::from_q4(&q4).to_q4();
            assert_eq!((back.n, back.k, back.blocks.len()), (n, k, q4.blocks.len()));
            for (a, b) in back.blocks.iter().zip(&q4.blocks) {
                assert_eq!((a.d.to_bits(), a.qs), (b.d.to_bits(), b.qs));
            }
        }
    }

    #[test]
    fn repack_dequantize_row_equals_the_original() {
        for &(n, k) in &[(1usize, 32usize), (9, 96), (37, 1024)] {
            let w = weights(n * k, 5);
            let q8 = Q8Matrix::quantize(&w, n, k);
            let q4 = Q4Matrix::quantize(&w, n, k);
            let (r8, r4) = (Q8x8Matrix::from_q8(&q8), Q4x8Matrix::from_q4(&q4));
            assert_eq!(bits(&r8.dequantize()), bits(&q8.dequantize()));
            assert_eq!(bits(&r4.dequantize()), bits(&q4.dequantize()));
        }
    }

    #[test]
    fn repack_memory_stays_within_budget() {
        let (n, k) = (37, 1024);
        let w = weights(n * k, 6);
        let row_blocks = n.div_ceil(ROWS) * ROWS * k / 32; // padded rows included
        // Exactly Q8_0's 34 and Q4_0's 18 bytes per row-block (only the padding rows are extra).
        assert_eq!(Q8x8Matrix::from_q8(&Q8Matrix::quantize(&w, n, k)).bytes(), row_blocks * 34);
        assert_eq!(Q4x8Matrix::from_q4(&Q4Matrix::quantize(&w, n, k)).bytes(), row_blocks * 18);
    }

    /// Extreme integers: the i16 intermediate sums must neither saturate nor wrap. With one block
    /// both paths round once (`0 + s·d` vs `fma(s, d, 0)`), so they must agree exactly.
    #[test]
    fn repack_extreme_values_do_not_overflow() {
        let (m, n, k) = (3, 9, 32);
        let run = |f: &dyn Fn(&mut [f32], Isa)| {
            let mut a = vec![0f32; m * n];
            f(&mut a, Isa::Portable);
            for isa in Isa::simd_paths() {
                let mut b = vec![0f32; m * n];
                f(&mut b, isa);
                assert_eq!(bits(&a), bits(&b), "{}", isa.name());
            }
            a
        };
        let near = |y: &[f32], want: f32| assert!(y.iter().all(|v| (v - want).abs() < 0.01 * want.abs()), "{y:?} vs {want}");
        // All weights -127 and all activations ±127: every maddubs pair is 2·127·127.
        let q8 = Q8x8Matrix::from_q8(&Q8Matrix::quantize(&vec![-1.0; n * k], n, k));
        // Q4 nibbles all 0 (-8) or all 15 (+7), scale 1.
        let q4 = |nib: u8| Q4x8Matrix::from_q4(&Q4Matrix { n, k, blocks: vec![BlockQ4 { d: f16::ONE, qs: [nib * 0x11; 16] }; n] });
        let (q4_lo, q4_hi) = (q4(0), q4(15));
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; m * k];
            near(&run(&|y, isa| q8.linear(&x, m, y, isa)), -32.0 * sign);
            near(&run(&|y, isa| q4_lo.linear(&x, m, y, isa)), -256.0 * sign);
            near(&run(&|y, isa| q4_hi.linear(&x, m, y, isa)), 224.0 * sign);
        }
    }

    /// The SwiGLU epilogue gives the bits of the matmul followed by the separate pass, on every
    /// ISA and pool size; odd `inter` (not a multiple of 8) takes the unfused route.
    #[test]
    fn swiglu_epilogue_matches_matmul_then_silu_mul() {
        let k = 96;
        for inter in [8, 40, 44] {
            let n = 2 * inter;
            let w = weights(n * k, inter as u64);
            let mats: Vec<Box<dyn QuantMatrix>> =
                vec![Box::new(Q8x8Matrix::from_q8(&Q8Matrix::quantize(&w, n, k))), Box::new(Q4x8Matrix::from_q4(&Q4Matrix::quantize(&w, n, k)))];
            for threads in [1, 3] {
                let pool = crate::pool::ThreadPool::new(threads).unwrap();
                for m in [1, 5, 37] {
                    let x = test_data(m * k, (m + inter) as u64);
                    for q in &mats {
                        for isa in std::iter::once(Isa::Portable).chain(Isa::simd_paths()) {
                            let (mut gu, mut want) = (vec![0f32; m * n], vec![0f32; m * inter]);
                            q.linear(&x, m, &mut gu, isa);
                            crate::fused::silu_mul(&gu, inter, &mut want);
                            let (mut gu2, mut act) = (vec![f32::NAN; m * n], vec![f32::NAN; m * inter]);
                            pool.install(|| q.linear_swiglu(&x, m, &mut gu2, &mut act, isa));
                            let what = format!("{} {} m={m} inter={inter} threads={threads}", q.name(), isa.name());
                            assert_eq!(bits(&act), bits(&want), "{what}");
                            assert_eq!(bits(&gu2), bits(&gu), "{what}");
                        }
                    }
                }
            }
        }
    }

    /// Task splitting in another pool size: same bits as the current pool.
    #[test]
    fn repack_results_do_not_depend_on_the_pool() {
        let (m, n, k) = (5, 203, 96);
        let x = test_data(m * k, 31);
        let r = Q4x8Matrix::from_q4(&Q4Matrix::quantize(&weights(n * k, 32), n, k));
        let isa = crate::active_isa();
        let mut a = vec![0f32; m * n];
        r.linear(&x, m, &mut a, isa);
        for threads in [1, 3] {
            let pool = crate::pool::ThreadPool::new(threads).unwrap();
            let mut b = vec![0f32; m * n];
            pool.install(|| r.linear(&x, m, &mut b, isa));
            assert_eq!(bits(&a), bits(&b), "{threads} threads");
        }
    }
}
