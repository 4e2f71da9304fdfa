//! Causal flash attention on the CPU: `n` new queries against a KV cache that already holds their
//! keys and values. The cache may be f32, f16 or bf16 (widened to f32 in registers); all
//! accumulation is f32.
//!
//! Why it is shaped this way:
//! - The `n × (start + n)` score matrix is never built. Keys are visited in tiles of `KV_TILE`;
//!   each query row keeps a running max `m`, a running sum `l` and an accumulator that is rescaled
//!   whenever `m` grows (online softmax), so memory stays `O(rows · head_dim)` at any context length.
//! - GQA: the query heads that share a KV head, over a tile of query tokens, are the rows of one
//!   work item, so each K/V tile is brought into cache once for the whole group and used by every
//!   row while hot, instead of being streamed once per query head.
//! - Parallelism (current kernel pool): work items are (kv head, query tile). When there are too
//!   few of them to keep the pool busy (decode, short chunks against a long cache) the KV length is
//!   also split into chunks; each chunk leaves a partial `(m, l, acc)` per row and the partials are
//!   merged exactly afterwards.
use crate::simd::Isa;
use half::{bf16, f16};
use crate::pool::{current_threads, parallel_chunks_mut, parallel_for, thread_index};
use std::cell::UnsafeCell;
use crate::linear::WeightElem;
use std::cell::Cell;
use std::ops::Range;

/// Keys per tile: a K or V tile (32 × 128 f32 = 16 KiB) stays in L1 while every row uses it.
const KV_TILE: usize = 32;
/// Query rows (tokens × heads of a group) per work item: enough rows to reuse each K/V tile many
/// times, few enough that their queries and accumulators stay in L2.
const ROWS_PER_ITEM: usize = 32;
/// Shortest KV chunk worth a task of its own when the KV length is split.
const MIN_KV_CHUNK: usize = 128;

mod plain;
pub use plain::plain_attention;

/// Element type of the KV cache: f32, or [`f16`] / [`bf16`] (half the memory and bandwidth),
/// widened to f32 when read (the weights' [`WeightElem::to_f32`]).
pub trait KvElem: WeightElem + sealed::Storage {
    fn from_f32(x: f32) -> Self;
}

impl KvElem for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}
impl KvElem for f16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}
impl KvElem for bf16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// How the kernels read each element type; sealed, so [`KvElem`] covers exactly f32, f16 and bf16.
mod sealed {
    use half::slice::HalfFloatSliceExt;
    use half::{bf16, f16};
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    pub trait Storage: Sized {
        /// The slice itself when it already is f32 (nothing to widen).
        fn as_f32(_: &[Self]) -> Option<&[f32]> {
            None
        }
        /// `dst = src` as f32 (half's slice conversion uses F16C where the CPU has it).
        fn widen(src: &[Self], dst: &mut [f32]);
        /// Eight consecutive elements as f32 lanes.
        /// # Safety
        /// `p` points to 8 readable elements and the CPU supports AVX2 + F16C.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Storage for f32 {
        fn as_f32(s: &[f32]) -> Option<&[f32]> {
            Some(s)
        }
        fn widen(src: &[f32], dst: &mut [f32]) {
            dst.copy_from_slice(src)
        }
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }

    impl Storage for f16 {
        fn widen(src: &[f16], dst: &mut [f32]) {
            src.convert_to_f32_slice(dst)
        }
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
    }

    impl Storage for bf16 {
        fn widen(src: &[bf16], dst: &mut [f32]) {
            src.convert_to_f32_slice(dst)
        }
        /// bf16 is the top half of an f32: zero-extend to 32 bits and shift left.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load8(p: *const bf16) -> __m256 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }
}

/// Sizes and layout of one attention call (one sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// KV heads; `heads % kv_heads == 0` and query head `h` uses KV head `h / (heads / kv_heads)`.
    pub kv_heads: usize,
    pub head_dim: usize,
    /// New tokens, at positions `start .. start + q_len`.
    pub q_len: usize,
    /// Tokens already in the cache before the new ones.
    pub start: usize,
}

/// Where the cache keeps each key: in blocks of `block_len` tokens, logical block `b` of the
/// sequence being physical block `table[b]` of a shared pool (paged KV). Inside a block each KV
/// head's rows are contiguous, so a run of keys up to the block's end is one slice.
#[derive(Debug, Clone, Copy)]
pub struct KvPages<'a> {
    pub table: &'a [u32],
    pub block_len: usize,
    /// Elements between physical blocks.
    pub block_stride: usize,
    /// Elements between KV heads inside a block.
    pub head_stride: usize,
}

impl KvPages<'static> {
    /// One contiguous `[kv_heads][capacity][head_dim]` buffer (`head_stride = capacity * head_dim`).
    pub fn contiguous(head_stride: usize) -> Self {
        KvPages { table: &[0], block_len: usize::MAX, block_stride: 0, head_stride }
    }
}

impl KvPages<'_> {
    /// Element offset of key `j`'s row of KV head `kh`.
    #[inline(always)]
    pub fn offset(&self, kh: usize, j: usize, head_dim: usize) -> usize {
        self.table[j / self.block_len] as usize * self.block_stride + kh * self.head_stride + (j % self.block_len) * head_dim
    }

    /// Keys stored contiguously from key `j` (to the end of its block).
    #[inline(always)]
    pub fn run(&self, j: usize) -> usize {
        self.block_len - j % self.block_len
    }

    /// Panics unless every key up to `kv_len` of every head lies inside `len` elements.
    fn check(&self, kv_heads: usize, head_dim: usize, kv_len: usize, len: usize) {
        if kv_len == 0 {
            return;
        }
        let blocks = (kv_len - 1) / self.block_len + 1;
        assert!(self.table.len() >= blocks, "attention: {} blocks in the table, {kv_len} keys need {blocks}", self.table.len());
        let rows = self.block_len.min(kv_len);
        assert!(self.head_stride >= rows * head_dim || kv_heads == 1, "attention: head_stride {} below {rows} keys", self.head_stride);
        let top = self.table[..blocks].iter().max().copied().unwrap_or(0) as usize;
        let end = top * self.block_stride + (kv_heads - 1) * self.head_stride + rows * head_dim;
        assert!(len >= end, "attention: cache ({len}) shorter than block {top}'s rows ({end})");
    }
}

impl AttentionShape {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Keys seen by the last query: `start + q_len`.
    pub fn kv_len(&self) -> usize {
        self.start + self.q_len
    }

    /// Panics unless the buffers hold what the shape says (the kernels then index without checks).
    fn check(&self, q: usize, k: usize, v: usize, out: usize, pages: &KvPages) {
        let s = self;
        assert!(s.heads > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0, "attention: {} heads, {} kv heads", s.heads, s.kv_heads);
        assert!(s.head_dim > 0 && pages.block_len > 0, "attention: head_dim or block_len is 0");
        let rows = s.q_len * s.heads * s.head_dim;
        assert!(q >= rows && out >= rows, "attention: q ({q}) or out ({out}) shorter than {rows}");
        pages.check(s.kv_heads, s.head_dim, s.kv_len(), k.min(v));
    }
}

/// Causal attention of `q_len` new queries against the cache, which already holds the new tokens'
/// K/V at positions `start .. start + q_len`. Query `i` sees keys `0 ..= start + i`.
///
/// - `q`: `[q_len, heads, head_dim]` row-major.
/// - `k`, `v`: the cache's elements, laid out as `pages` says; keys past `start + q_len` are never read.
/// - `out`: `[q_len, heads * head_dim]`. Scale `1 / sqrt(head_dim)`.
///
/// Runs on the current kernel pool ([`crate::pool`]). `isa` picks the SIMD path (pass [`crate::active_isa`]);
/// AVX2 needs `head_dim % 8 == 0` and falls back to the portable path otherwise.
pub fn flash_attention<T: KvElem>(q: &[f32], k: &[T], v: &[T], pages: &KvPages, out: &mut [f32], shape: &AttentionShape, isa: Isa) {
    shape.check(q.len(), k.len(), v.len(), out.len(), pages);
    let plan = Plan::choose(shape, crate::pool::current_threads());
    run(q, k, v, pages, out, shape, isa, plan);
}

/// How one call is cut into work items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// Query tokens per item.
    q_tile: usize,
    /// Keys per item; at least the KV length when it is not split.
    kv_chunk: usize,
}

impl Plan {
    /// Items of (kv head, query tile); if there are fewer than a few per thread, split the KV
    /// length too, in chunks of at least [`MIN_KV_CHUNK`] keys.
    fn choose(shape: &AttentionShape, threads: usize) -> Plan {
        let q_tile = (ROWS_PER_ITEM / shape.group()).clamp(1, shape.q_len.max(1));
        let items = shape.kv_heads * shape.q_len.div_ceil(q_tile);
        let kv_len = shape.kv_len().max(1);
        let target = 4 * threads;
        let chunks = if threads > 1 && items < target { target.div_ceil(items.max(1)).min(kv_len / MIN_KV_CHUNK).max(1) } else { 1 };
        Plan { q_tile, kv_chunk: kv_len.div_ceil(chunks).next_multiple_of(KV_TILE) }
    }
}

/// [`flash_attention`] with a given plan (tests force splits through here).
#[allow(clippy::too_many_arguments)]
fn run<T: KvElem>(q: &[f32], k: &[T], v: &[T], pages: &KvPages, out: &mut [f32], shape: &AttentionShape, isa: Isa, plan: Plan) {
    if shape.q_len == 0 {
        return;
    }
    let p = Problem::new(q, k, v, pages, shape, isa, plan);
    let chunks = shape.kv_len().div_ceil(plan.kv_chunk);
    let groups = shape.kv_heads * p.q_tiles();
    let dst = OutPtr(out.as_mut_ptr());
    let max_rows = plan.q_tile * shape.group();
    if chunks == 1 {
        with_scratches(max_rows, shape.head_dim, |scratches| {
            parallel_for(groups, |gi| {
                let (kh, tokens) = p.group_of(gi);
                let s = scratches.get();
                p.attend(kh, tokens.clone(), 0..shape.kv_len(), s);
                // SAFETY: `check` sized `out`; this item alone writes its (tokens, heads) block.
                unsafe { p.write_out(kh, tokens, s, dst) }
            })
        });
        return;
    }
    // Split KV: every (group, chunk) leaves its partial softmax, then each group merges its own.
    let part_len = p.part_len();
    with_partials(groups * chunks * part_len, |parts| {
        with_scratches(max_rows, shape.head_dim, |scratches| {
            parallel_chunks_mut(parts, part_len, |item, part| {
                let (kh, tokens) = p.group_of(item / chunks);
                let c = item % chunks;
                let s = scratches.get();
                p.attend(kh, tokens.clone(), c * plan.kv_chunk..(c + 1) * plan.kv_chunk, s);
                s.save(tokens.len() * shape.group(), shape.head_dim, part);
            })
        });
        parallel_for(groups, |gi| {
            let (kh, tokens) = p.group_of(gi);
            // SAFETY: as above, one writer per (tokens, heads) block.
            unsafe { p.merge(kh, tokens, &parts[gi * chunks * part_len..][..chunks * part_len], dst) }
        });
    });
}

/// Output pointer shared by items that write disjoint blocks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Per-thread working set of one item; rows are `token * group + head in group`.
#[derive(Default)]
struct Scratch {
    /// Queries, pre-multiplied by the softmax scale: `[rows][head_dim]`.
    q: Vec<f32>,
    /// Unnormalised outputs: `[rows][head_dim]`.
    acc: Vec<f32>,
    /// Scores, then probabilities, of the current key tile: `[rows][KV_TILE]`.
    p: Vec<f32>,
    /// Running max, running sum, and this tile's rescale factor, per row.
    m: Vec<f32>,
    l: Vec<f32>,
    corr: Vec<f32>,
    /// A K or V tile widened to f32 (portable path, f16 / bf16 cache).
    wide: Vec<f32>,
}

impl Scratch {
    /// Room for items of up to `rows` rows, so that `reset` and `widen` never allocate.
    fn reserve(&mut self, rows: usize, hd: usize) {
        for (v, len) in [
            (&mut self.q, rows * hd),
            (&mut self.acc, rows * hd),
            (&mut self.p, rows * KV_TILE),
            (&mut self.m, rows),
            (&mut self.l, rows),
            (&mut self.corr, rows),
            (&mut self.wide, KV_TILE * hd),
        ] {
            if v.capacity() < len {
                v.reserve(len - v.len());
            }
        }
    }

    fn reset(&mut self, rows: usize, hd: usize) {
        fn fill(v: &mut Vec<f32>, len: usize, x: f32) {
            v.clear();
            v.resize(len, x);
        }
        fill(&mut self.q, rows * hd, 0.0);
        fill(&mut self.acc, rows * hd, 0.0);
        fill(&mut self.p, rows * KV_TILE, 0.0);
        fill(&mut self.m, rows, f32::NEG_INFINITY);
        fill(&mut self.l, rows, 0.0);
        fill(&mut self.corr, rows, 1.0);
    }

    /// Partial layout: `m[rows]`, `l[rows]`, `acc[rows][hd]` (the part may be longer).
    fn save(&self, rows: usize, hd: usize, part: &mut [f32]) {
        part[..rows].copy_from_slice(&self.m[..rows]);
        part[rows..2 * rows].copy_from_slice(&self.l[..rows]);
        part[2 * rows..][..rows * hd].copy_from_slice(&self.acc[..rows * hd]);
    }
}

thread_local! {
    static SCRATCHES: Cell<Vec<UnsafeCell<Scratch>>> = const { Cell::new(Vec::new()) };
    static PARTIALS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// One scratch per pool thread, owned by the calling thread and sized by it before the items run:
/// an item never allocates, whichever thread runs it (so a warm decode step allocates nothing).
struct Scratches(Vec<UnsafeCell<Scratch>>);
// SAFETY: each scratch is used only by the thread whose pool index it has (see `get`).
unsafe impl Sync for Scratches {}

impl Scratches {
    /// The running thread's scratch.
    #[allow(clippy::mut_from_ref)]
    fn get(&self) -> &mut Scratch {
        // SAFETY: tasks running at the same time have distinct thread indices, and an item does
        // not call back into attention, so this is the only live reference to the entry.
        unsafe { &mut *self.0[thread_index()].get() }
    }
}

/// Runs `f` with this call's scratches, reserved for items of up to `rows` rows.
fn with_scratches<R>(rows: usize, hd: usize, f: impl FnOnce(&Scratches) -> R) -> R {
    SCRATCHES.with(|cell| {
        let mut v = cell.take();
        let needed = current_threads().max(thread_index() + 1);
        if v.len() < needed {
            v.resize_with(needed, Default::default);
        }
        v.iter_mut().for_each(|s| s.get_mut().reserve(rows, hd));
        let scratches = Scratches(v);
        let r = f(&scratches);
        cell.set(scratches.0);
        r
    })
}

/// Runs `f` with this thread's reused buffer of `len` zeroed floats for split-KV partials.
fn with_partials<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    crate::scratch::with_buffer(&PARTIALS, len, 0.0, |buf| {
        buf.fill(0.0);
        f(buf)
    })
}

/// One call's inputs and the SIMD path chosen for it.
struct Problem<'a, T> {
    q: &'a [f32],
    k: &'a [T],
    v: &'a [T],
    pages: KvPages<'a>,
    shape: AttentionShape,
    plan: Plan,
    scale: f32,
    avx2: bool,
}

impl<'a, T: KvElem> Problem<'a, T> {
    fn new(q: &'a [f32], k: &'a [T], v: &'a [T], pages: &KvPages<'a>, shape: &AttentionShape, isa: Isa, plan: Plan) -> Self {
        let avx2 = cfg!(target_arch = "x86_64") && isa.uses_avx2() && shape.head_dim % 8 == 0 && Isa::Avx2.supported();
        Problem { q, k, v, pages: *pages, shape: *shape, plan, scale: 1.0 / (shape.head_dim as f32).sqrt(), avx2 }
    }

    fn q_tiles(&self) -> usize {
        self.shape.q_len.div_ceil(self.plan.q_tile)
    }

    /// Group index -> (kv head, query tokens).
    fn group_of(&self, gi: usize) -> (usize, Range<usize>) {
        let (kh, qt) = (gi / self.q_tiles(), gi % self.q_tiles());
        let t0 = qt * self.plan.q_tile;
        (kh, t0..(t0 + self.plan.q_tile).min(self.shape.q_len))
    }

    /// Floats of one split-KV partial: `m`, `l` and `acc` for the largest group.
    fn part_len(&self) -> usize {
        self.plan.q_tile * self.shape.group() * (self.shape.head_dim + 2)
    }

    /// Online softmax of the rows of (kv head `kh`, `tokens`) over `keys` (clipped to what the last
    /// of them may see), leaving the unnormalised `(m, l, acc)` in `s`.
    fn attend(&self, kh: usize, tokens: Range<usize>, keys: Range<usize>, s: &mut Scratch) {
        let (hd, g) = (self.shape.head_dim, self.shape.group());
        let rows = tokens.len() * g;
        s.reset(rows, hd);
        self.gather_queries(kh, tokens.clone(), &mut s.q);
        let end = keys.end.min(self.shape.start + tokens.end);
        let mut j0 = keys.start;
        while j0 < end {
            // A tile never crosses a block: its keys are one contiguous run.
            let nk = KV_TILE.min(end - j0).min(self.pages.run(j0));
            let at = self.pages.offset(kh, j0, hd);
            let (kt, vt) = (&self.k[at..][..nk * hd], &self.v[at..][..nk * hd]);
            self.scores(&s.q, rows, kt, nk, &mut s.p, &mut s.wide);
            for r in 0..rows {
                // Row r is token tokens.start + r / g, which sees keys up to its own position.
                let visible = (self.shape.start + tokens.start + r / g + 1).saturating_sub(j0).min(nk);
                let p = &mut s.p[r * KV_TILE..][..nk];
                s.corr[r] = softmax_step(self.avx2, p, visible, &mut s.m[r], &mut s.l[r]);
            }
            self.accumulate(&s.p, &s.corr, rows, vt, nk, &mut s.acc, &mut s.wide);
            j0 += nk;
        }
    }

    /// The group's query rows, scaled, into `dst` (the heads of a group are adjacent in `q`).
    fn gather_queries(&self, kh: usize, tokens: Range<usize>, dst: &mut [f32]) {
        let (hd, g, heads) = (self.shape.head_dim, self.shape.group(), self.shape.heads);
        let width = g * hd;
        for (i, t) in tokens.enumerate() {
            let src = &self.q[(t * heads + kh * g) * hd..][..width];
            for (d, &x) in dst[i * width..][..width].iter_mut().zip(src) {
                *d = x * self.scale;
            }
        }
    }

    /// `out[t, head] = acc / l` for the group's rows.
    /// # Safety
    /// `out` holds `[q_len, heads * head_dim]` floats and nobody else writes this block.
    unsafe fn write_out(&self, kh: usize, tokens: Range<usize>, s: &Scratch, out: OutPtr) {
        let (hd, g) = (self.shape.head_dim, self.shape.group());
        for (i, t) in tokens.enumerate() {
            let dst = std::slice::from_raw_parts_mut(out.0.add((t * self.shape.heads + kh * g) * hd), g * hd);
            for (hh, o) in dst.chunks_exact_mut(hd).enumerate() {
                let r = i * g + hh;
                let inv = 1.0 / s.l[r];
                for (o, a) in o.iter_mut().zip(&s.acc[r * hd..][..hd]) {
                    *o = a * inv;
                }
            }
        }
    }

    /// Exact merge of per-chunk partial softmaxes: with `M = max m_c`, the output is
    /// `Σ e^(m_c - M) acc_c / Σ e^(m_c - M) l_c`. Chunks a row cannot see have `m = -inf`, weight 0.
    /// # Safety
    /// As [`Self::write_out`].
    unsafe fn merge(&self, kh: usize, tokens: Range<usize>, parts: &[f32], out: OutPtr) {
        let (hd, g) = (self.shape.head_dim, self.shape.group());
        let rows = tokens.len() * g;
        let part_len = self.part_len();
        let chunk = |c: usize| -> (&[f32], &[f32], &[f32]) {
            let p = &parts[c * part_len..];
            (&p[..rows], &p[rows..2 * rows], &p[2 * rows..])
        };
        let chunks = parts.len() / part_len;
        for (i, t) in tokens.enumerate() {
            for hh in 0..g {
                let r = i * g + hh;
                let m = (0..chunks).map(|c| chunk(c).0[r]).fold(f32::NEG_INFINITY, f32::max);
                let l: f32 = (0..chunks).map(|c| (chunk(c).0[r] - m).exp() * chunk(c).1[r]).sum();
                let dst = std::slice::from_raw_parts_mut(out.0.add((t * self.shape.heads + kh * g + hh) * hd), hd);
                dst.fill(0.0);
                for c in 0..chunks {
                    let (mc, _, acc) = chunk(c);
                    let w = (mc[r] - m).exp() / l;
                    if w != 0.0 {
                        for (o, a) in dst.iter_mut().zip(&acc[r * hd..][..hd]) {
                            *o += w * a;
                        }
                    }
                }
            }
        }
    }

    /// `p[r][j] = q_r · k_j` for all rows and the `nk` keys of the tile.
    fn scores(&self, q: &[f32], rows: usize, k: &[T], nk: usize, p: &mut [f32], wide: &mut Vec<f32>) {
        let hd = self.shape.head_dim;
        debug_assert!(q.len() >= rows * hd && k.len() >= nk * hd && p.len() >= rows * KV_TILE && nk <= KV_TILE);
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: lengths as asserted by the callers, head_dim % 8 == 0 and AVX2 checked in `new`.
            return unsafe { avx2::scores(q, rows, hd, k, nk, p) };
        }
        for (j, key) in widen(k, wide).chunks_exact(hd).take(nk).enumerate() {
            for r in 0..rows {
                p[r * KV_TILE + j] = dot(&q[r * hd..][..hd], key);
            }
        }
    }

    /// `acc_r = acc_r * corr_r + Σ_j p[r][j] v_j` for all rows.
    #[allow(clippy::too_many_arguments)]
    fn accumulate(&self, p: &[f32], corr: &[f32], rows: usize, v: &[T], nk: usize, acc: &mut [f32], wide: &mut Vec<f32>) {
        let hd = self.shape.head_dim;
        debug_assert!(acc.len() >= rows * hd && v.len() >= nk * hd && p.len() >= rows * KV_TILE && corr.len() >= rows);
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: as in `scores`.
            return unsafe { avx2::accumulate(p, corr, rows, hd, v, nk, acc) };
        }
        let v = widen(v, wide);
        for r in 0..rows {
            let a = &mut acc[r * hd..][..hd];
            if corr[r] != 1.0 {
                a.iter_mut().for_each(|x| *x *= corr[r]);
            }
            for (j, val) in v.chunks_exact(hd).take(nk).enumerate() {
                let w = p[r * KV_TILE + j];
                if w != 0.0 {
                    for (x, y) in a.iter_mut().zip(val) {
                        *x += w * y;
                    }
                }
            }
        }
    }
}

/// One online-softmax step for a row: the first `visible` scores of `s` become `exp(s - m_new)`,
/// the masked rest become 0, `(m, l)` are updated, and the factor that rescales the row's old
/// accumulator is returned (1 when nothing is visible, so a masked tile changes nothing).
fn softmax_step(avx2: bool, s: &mut [f32], visible: usize, m: &mut f32, l: &mut f32) -> f32 {
    let (seen, masked) = s.split_at_mut(visible);
    masked.fill(0.0);
    if seen.is_empty() {
        return 1.0;
    }
    let m_new = max(avx2, seen, *m);
    let sum = exp_sum(avx2, seen, m_new);
    let corr = (*m - m_new).exp(); // 0 on the first tile (m = -inf), when acc and l are still 0
    *l = *l * corr + sum;
    *m = m_new;
    corr
}

/// `s[i] = exp(s[i] - m)`, returning the sum.
fn exp_sum(avx2: bool, s: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only set when the CPU supports it.
        return unsafe { avx2::exp_sum(s, m) };
    }
    let _ = avx2;
    s.iter_mut().map(|x| {
        *x = (*x - m).exp();
        *x
    }).sum()
}

/// The largest of `init` and the elements of `s`.
fn max(avx2: bool, s: &[f32], init: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only set when the CPU supports it.
        return unsafe { avx2::max(s, init) };
    }
    let _ = avx2;
    s.iter().fold(init, |a, &b| a.max(b))
}

/// `x` as f32: itself for an f32 cache, else widened into `buf` (once per tile, for all rows).
fn widen<'b, T: KvElem>(x: &'b [T], buf: &'b mut Vec<f32>) -> &'b [f32] {
    if let Some(x) = T::as_f32(x) {
        return x;
    }
    buf.resize(x.len(), 0.0);
    T::widen(x, &mut buf[..]);
    &buf[..]
}

/// Dot product with eight partial sums (vectorisable), the portable path's inner loop.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = at.iter().zip(bt).map(|(x, y)| x * y).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// AVX2 + FMA kernels (head_dim % 8 == 0): register tiles of up to 4 rows so each loaded K or V
/// vector feeds several FMAs; f16 widened by F16C, bf16 by a 16-bit shift.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{KvElem, KV_TILE};
    use crate::simd::x86::hsum;
    use std::arch::x86_64::*;

    /// Calls `kernel::<T, R, W>` for each block of R <= 4 rows, with W = 8 / R (rounded down to
    /// 2 for R = 3) keys or column-vectors per register tile, so every tile keeps about 8
    /// accumulators: fewer rows (decode, small groups) get wider tiles.
    macro_rules! by_rows {
        ($rows:expr, |$r:ident| $kernel:ident::<$t:ty>($($arg:expr),*)) => {{
            let mut $r = 0;
            while $r < $rows {
                let n = ($rows - $r).min(4);
                match n {
                    4 => $kernel::<$t, 4, 2>($($arg),*),
                    3 => $kernel::<$t, 3, 2>($($arg),*),
                    2 => $kernel::<$t, 2, 4>($($arg),*),
                    _ => $kernel::<$t, 1, 8>($($arg),*),
                }
                $r += n;
            }
        }};
    }

    /// See `Problem::scores`. # Safety: slices as described there, head_dim % 8 == 0, AVX2 + F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores<T: KvElem>(q: &[f32], rows: usize, hd: usize, k: &[T], nk: usize, p: &mut [f32]) {
        let (q, k, p) = (q.as_ptr(), k.as_ptr(), p.as_mut_ptr());
        by_rows!(rows, |r| score_rows::<T>(q.add(r * hd), hd, k, nk, p.add(r * KV_TILE)))
    }

    /// R query rows against the tile's keys, J keys at a time, then one at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn score_rows<T: KvElem, const R: usize, const J: usize>(q: *const f32, hd: usize, k: *const T, nk: usize, p: *mut f32) {
        let mut j = 0;
        while j + J <= nk {
            score_block::<T, R, J>(q, hd, k.add(j * hd), p.add(j));
            j += J;
        }
        for j in j..nk {
            score_block::<T, R, 1>(q, hd, k.add(j * hd), p.add(j));
        }
    }

    /// R × J dot products over head_dim: each K load feeds R FMAs, each Q load J.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn score_block<T: KvElem, const R: usize, const J: usize>(q: *const f32, hd: usize, k: *const T, p: *mut f32) {
        let mut a = [[_mm256_setzero_ps(); J]; R];
        for d in (0..hd).step_by(8) {
            let mut qv = [_mm256_setzero_ps(); R];
            for (r, qv) in qv.iter_mut().enumerate() {
                *qv = _mm256_loadu_ps(q.add(r * hd + d));
            }
            for jj in 0..J {
                let x = T::load8(k.add(jj * hd + d));
                for r in 0..R {
                    a[r][jj] = _mm256_fmadd_ps(qv[r], x, a[r][jj]);
                }
            }
        }
        if R * J == 8 {
            let mut v = [_mm256_setzero_ps(); 8];
            for r in 0..R {
                v[r * J..][..J].copy_from_slice(&a[r]);
            }
            let mut sums = [0f32; 8];
            _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(v));
            for r in 0..R {
                std::ptr::copy_nonoverlapping(sums.as_ptr().add(r * J), p.add(r * KV_TILE), J);
            }
        } else {
            for r in 0..R {
                for jj in 0..J {
                    *p.add(r * KV_TILE + jj) = hsum(a[r][jj]);
                }
            }
        }
    }

    /// The lane sums of eight vectors, in order, in one vector: two rounds of pairwise adds within
    /// 128-bit halves, then the halves added (far fewer shuffles than eight separate sums).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum8(v: [__m256; 8]) -> __m256 {
        let (a, b) = (_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let (c, d) = (_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
        let (ab, cd) = (_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31))
    }

    /// See `Problem::accumulate`. # Safety: as [`scores`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn accumulate<T: KvElem>(p: &[f32], corr: &[f32], rows: usize, hd: usize, v: &[T], nk: usize, acc: &mut [f32]) {
        let (p, corr, v, acc) = (p.as_ptr(), corr.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
        by_rows!(rows, |r| accumulate_rows::<T>(p.add(r * KV_TILE), corr.add(r), hd, v, nk, acc.add(r * hd)))
    }

    /// R rows, 8C columns at a time, then 8 at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate_rows<T: KvElem, const R: usize, const C: usize>(p: *const f32, corr: *const f32, hd: usize, v: *const T, nk: usize, acc: *mut f32) {
        let mut d = 0;
        while d + 8 * C <= hd {
            axpy_block::<T, R, C>(p, corr, hd, v.add(d), nk, acc.add(d));
            d += 8 * C;
        }
        for d in (d..hd).step_by(8) {
            axpy_block::<T, R, 1>(p, corr, hd, v.add(d), nk, acc.add(d));
        }
    }

    /// An R × 8C block of accumulators kept in registers across the whole key tile: rescaled
    /// once, then one FMA per (row, key, 8 columns); each V load feeds R FMAs.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy_block<T: KvElem, const R: usize, const C: usize>(p: *const f32, corr: *const f32, hd: usize, v: *const T, nk: usize, acc: *mut f32) {
        let mut a = [[_mm256_setzero_ps(); C]; R];
        for r in 0..R {
            let c = _mm256_set1_ps(*corr.add(r));
            for (i, a) in a[r].iter_mut().enumerate() {
                *a = _mm256_mul_ps(_mm256_loadu_ps(acc.add(r * hd + 8 * i)), c);
            }
        }
        for j in 0..nk {
            let mut w = [_mm256_setzero_ps(); R];
            for (r, w) in w.iter_mut().enumerate() {
                *w = _mm256_set1_ps(*p.add(r * KV_TILE + j));
            }
            for i in 0..C {
                let x = T::load8(v.add(j * hd + 8 * i));
                for r in 0..R {
                    a[r][i] = _mm256_fmadd_ps(w[r], x, a[r][i]);
                }
            }
        }
        for r in 0..R {
            for (i, a) in a[r].iter().enumerate() {
                _mm256_storeu_ps(acc.add(r * hd + 8 * i), *a);
            }
        }
    }

    /// `s[i] = exp(s[i] - m)`, returning the sum; 8 lanes at a time, scalar tail.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn exp_sum(s: &mut [f32], m: f32) -> f32 {
        let (mv, mut sum) = (_mm256_set1_ps(m), _mm256_setzero_ps());
        let mut chunks = s.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            sum = _mm256_add_ps(sum, e);
        }
        let mut total = hsum(sum);
        for x in chunks.into_remainder() {
            *x = (*x - m).exp();
            total += *x;
        }
        total
    }

    /// The largest of `init` and the elements of `s`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn max(s: &[f32], init: f32) -> f32 {
        let mut m = _mm256_set1_ps(init);
        let chunks = s.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            m = _mm256_max_ps(m, _mm256_loadu_ps(c.as_ptr()));
        }
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_max_ss(h, _mm_movehdup_ps(h));
        tail.iter().fold(_mm_cvtss_f32(h), |a, &b| a.max(b))
    }

    /// `e^x` for `x <= 0` to about 2 ulp: `x = n ln2 + r` with `|r| <= ln2 / 2`, `e^r` by a
    /// degree-6 polynomial (Cephes' `expf` coefficients), `2^n` built in the exponent bits. Inputs
    /// below -87 give `e^-87` (about 1.6e-38) rather than 0, keeping `2^n` a normal number.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        // ln 2 in two parts so that n * LN2_HI is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let one = _mm256_set1_ps(1.0);
        let y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, one));
        let pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data;

    /// Written past the valid rows and between heads: read by mistake, a huge key hijacks the
    /// softmax (inf in f16) and a NaN value poisons the output.
    const K_GARBAGE: f32 = 1e30;
    const V_GARBAGE: f32 = f32::NAN;

    /// A random problem: queries scaled so the softmax is far from uniform; a cache with 3 spare
    /// rows per head and 5 spare elements between heads, all garbage; or (`paged`) blocks of 16
    /// keys in a shuffled order with spare garbage blocks between them.
    struct Case {
        shape: AttentionShape,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        table: Vec<u32>,
        block_len: usize,
        block_stride: usize,
        head_stride: usize,
    }

    impl Case {
        fn new(heads: usize, kv_heads: usize, head_dim: usize, q_len: usize, start: usize) -> Case {
            Case::scaled(heads, kv_heads, head_dim, q_len, start, 4.0, false)
        }

        fn paged(heads: usize, kv_heads: usize, head_dim: usize, q_len: usize, start: usize) -> Case {
            Case::scaled(heads, kv_heads, head_dim, q_len, start, 4.0, true)
        }

        fn scaled(heads: usize, kv_heads: usize, head_dim: usize, q_len: usize, start: usize, q_scale: f32, paged: bool) -> Case {
            let len = start + q_len;
            let seed = (heads * 7 + kv_heads * 131 + head_dim * 1009 + q_len * 10007 + start * 100003) as u64;
            let q = test_data(q_len * heads * head_dim, seed).iter().map(|x| x * q_scale).collect();
            let (block_len, head_stride, blocks) = match paged {
                false => (usize::MAX, (len + 3) * head_dim + 5, 1),
                true => (16, 16 * head_dim, len.div_ceil(16).max(1)),
            };
            let block_stride = kv_heads * head_stride + 7;
            // Paged: logical block b in physical block 2 * perm(b) + 1 (the even blocks are spare).
            let table: Vec<u32> = if paged { (0..blocks as u32).map(|b| 2 * ((b * 7 + 3) % blocks as u32) + 1).collect() } else { vec![0] };
            let physical = if paged { 2 * blocks + 1 } else { 1 };
            let cache = |seed: u64, garbage: f32| {
                let mut c = vec![garbage; physical * block_stride];
                let vals = test_data(kv_heads * len * head_dim, seed);
                for h in 0..kv_heads {
                    for j in 0..len {
                        let at = table[j / block_len] as usize * block_stride + h * head_stride + (j % block_len) * head_dim;
                        c[at..][..head_dim].copy_from_slice(&vals[(h * len + j) * head_dim..][..head_dim]);
                    }
                }
                c
            };
            let shape = AttentionShape { heads, kv_heads, head_dim, q_len, start };
            Case { shape, q, k: cache(seed + 1, K_GARBAGE), v: cache(seed + 2, V_GARBAGE), table, block_len, block_stride, head_stride }
        }

        fn pages(&self) -> KvPages<'_> {
            KvPages { table: &self.table, block_len: self.block_len, block_stride: self.block_stride, head_stride: self.head_stride }
        }

        /// The cache in storage type `T` (garbage included).
        fn cache<T: KvElem>(&self) -> (Vec<T>, Vec<T>) {
            let conv = |c: &[f32]| c.iter().map(|&x| T::from_f32(x)).collect();
            (conv(&self.k), conv(&self.v))
        }

        /// `f`'s output, starting from NaN so that every element must be written.
        fn output<T: KvElem>(&self, k: &[T], v: &[T], f: impl FnOnce(&[f32], &[T], &[T], &KvPages, &mut [f32], &AttentionShape)) -> Vec<f32> {
            let mut out = vec![f32::NAN; self.shape.q_len * self.shape.heads * self.shape.head_dim];
            f(&self.q, k, v, &self.pages(), &mut out, &self.shape);
            out
        }
    }

    fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0f32, |a, b| a.max(b.abs())).max(1e-6);
        got.iter().zip(want).map(|(g, w)| if g.is_nan() { f32::INFINITY } else { (g - w).abs() / scale }).fold(0.0, f32::max)
    }

    fn isas() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2].into_iter().filter(|i| i.supported()).collect()
    }

    /// The global pool, then dedicated pools of 1 thread (never splits) and 2 threads.
    fn in_pools(mut f: impl FnMut(&str) + Send) {
        f("global");
        for threads in [1, 2] {
            let pool = crate::pool::ThreadPool::new(threads).unwrap();
            pool.install(|| f(&format!("{threads} threads")));
        }
    }

    /// flash_attention on every ISA and pool against the plain path, for one cache type.
    fn check_type<T: KvElem>(case: &Case, tol: f32) {
        let (k, v) = case.cache::<T>();
        let want = case.output(&k, &v, |q, k, v, p, o, s| plain_attention(q, k, v, p, o, s));
        assert!(want.iter().all(|x| x.is_finite()), "reference read garbage");
        in_pools(|pool| {
            for isa in isas() {
                let got = case.output(&k, &v, |q, k, v, p, o, s| flash_attention(q, k, v, p, o, s, isa));
                let err = max_rel_err(&got, &want);
                let name = std::any::type_name::<T>();
                assert!(err < tol, "{name} {isa:?} {pool} {:?}: error {err}", case.shape);
            }
        });
    }

    fn check(case: &Case) {
        check_type::<f32>(case, 1e-5);
        check_type::<f16>(case, 1e-5);
        check_type::<bf16>(case, 1e-5);
    }

    #[test]
    fn decode_matches_reference() {
        // (heads, kv_heads, head_dim, start): GQA groups 1, 2, 8; start 1000 splits the KV length.
        for (heads, kv_heads, hd, start) in [(16, 2, 128, 0), (16, 2, 128, 1000), (16, 8, 128, 300), (8, 8, 64, 1000), (16, 2, 32, 5), (2, 1, 64, 777)] {
            check(&Case::new(heads, kv_heads, hd, 1, start));
        }
    }

    #[test]
    fn prefill_matches_reference() {
        // (heads, kv_heads, head_dim, q_len, start)
        let cases = [
            (16, 2, 128, 7, 5),
            (16, 2, 128, 100, 5),
            (4, 2, 32, 33, 0),
            (16, 2, 64, 100, 0),
            (8, 1, 64, 33, 5),
            (4, 4, 128, 7, 0),
            (8, 8, 32, 100, 5),
            (16, 8, 64, 1, 5),
            (16, 2, 64, 7, 600),
        ];
        for (heads, kv_heads, hd, n, start) in cases {
            check(&Case::new(heads, kv_heads, hd, n, start));
        }
    }

    #[test]
    fn odd_head_dims_match_reference() {
        // 20: not a multiple of 8, AVX2 requested falls back to the portable path. 40: the AVX2
        // accumulator's 8-column tail.
        for (heads, kv_heads, hd, n, start) in [(4, 2, 20, 33, 5), (4, 1, 20, 1, 700), (6, 3, 40, 7, 3), (4, 2, 40, 1, 500)] {
            check(&Case::new(heads, kv_heads, hd, n, start));
        }
    }

    #[test]
    fn paged_cache_matches_reference() {
        // Shuffled blocks of 16 keys: decode (split and not), prefill tiles crossing blocks, a
        // partial last block.
        for (heads, kv_heads, hd, n, start) in [(16, 2, 128, 1, 1000), (16, 8, 64, 1, 37), (8, 2, 64, 40, 5), (4, 1, 32, 17, 0), (4, 2, 40, 3, 250)] {
            check(&Case::paged(heads, kv_heads, hd, n, start));
        }
    }

    #[test]
    fn split_kv_merge_is_exact() {
        // Forced chunkings, including chunks that end before some query rows' keys begin.
        for (n, start) in [(1, 1000), (7, 1000), (33, 200)] {
            let case = Case::new(16, 2, 64, n, start);
            let (k, v) = case.cache::<f16>();
            let want = case.output(&k, &v, |q, k, v, p, o, s| plain_attention(q, k, v, p, o, s));
            for isa in isas() {
                for kv_chunk in [32, 96, 160, 512, 4096] {
                    let plan = Plan { q_tile: 16, kv_chunk };
                    let got = case.output(&k, &v, |q, k, v, p, o, s| run(q, k, v, p, o, s, isa, plan));
                    let err = max_rel_err(&got, &want);
                    assert!(err < 1e-5, "{isa:?} n={n} start={start} chunk={kv_chunk}: {err}");
                }
            }
        }
    }

    #[test]
    fn plan_splits_short_queries_only() {
        let shape = |q_len, start| AttentionShape { heads: 16, kv_heads: 2, head_dim: 128, q_len, start };
        let decode = Plan::choose(&shape(1, 1000), 2);
        assert!(decode.kv_chunk < 1001 && decode.kv_chunk % KV_TILE == 0, "{decode:?}");
        assert!(Plan::choose(&shape(1, 1000), 1).kv_chunk >= 1001, "one thread gains nothing from a split");
        assert!(Plan::choose(&shape(1, 100), 2).kv_chunk >= 101, "too short to split");
        assert!(Plan::choose(&shape(512, 0), 2).kv_chunk >= 512, "prefill has enough (head, tile) items");
    }

    #[test]
    fn avx2_matches_portable() {
        if !Isa::Avx2.supported() {
            return;
        }
        for (n, start) in [(1, 2000), (64, 64)] {
            let case = Case::new(16, 8, 128, n, start);
            let (k, v) = case.cache::<bf16>();
            let a = case.output(&k, &v, |q, k, v, p, o, s| flash_attention(q, k, v, p, o, s, Isa::Portable));
            let b = case.output(&k, &v, |q, k, v, p, o, s| flash_attention(q, k, v, p, o, s, Isa::Avx2));
            assert!(max_rel_err(&b, &a) < 1e-5, "n={n} start={start}");
        }
    }

    #[test]
    fn large_scores_stay_finite() {
        // Scores in the hundreds: exp would overflow without the running max.
        let case = Case::scaled(8, 2, 64, 40, 300, 300.0, false);
        let (k, v) = case.cache::<f32>();
        let want = case.output(&k, &v, |q, k, v, p, o, s| plain_attention(q, k, v, p, o, s));
        for isa in isas() {
            let got = case.output(&k, &v, |q, k, v, p, o, s| flash_attention(q, k, v, p, o, s, isa));
            // Relative score error ~1e-7 of a score of ~300 shifts the weights by ~1e-4.
            assert!(max_rel_err(&got, &want) < 2e-3, "{isa:?}: {}", max_rel_err(&got, &want));
        }
    }

    #[test]
    fn no_queries_is_a_no_op() {
        let case = Case::new(4, 2, 32, 0, 10);
        let (k, v) = case.cache::<f32>();
        let out = case.output(&k, &v, |q, k, v, p, o, s| flash_attention(q, k, v, p, o, s, crate::active_isa()));
        assert!(out.is_empty());
    }
}
