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
//! - Parallelism (current kernel pool): work items are (sequence, kv head, query tile), every
//!   sequence of a batch ([`flash_attention_batch`]) in one pass over the pool. When a sequence
//!   alone has too few of them to keep the pool busy (decode, short chunks against a long cache),
//!   its KV length is also split into chunks (decided per sequence, so that a batch changes no
//!   bits); each chunk leaves a partial `(m, l, acc)` per row and the partials are merged exactly
//!   afterwards.
use crate::pool::{current_threads, parallel_for, thread_index, OutPtr};
use crate::simd::{Isa, Widen};
use half::{bf16, f16};
use std::cell::{Cell, UnsafeCell};
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
mod avx2;
mod plain;

pub use plain::plain_attention;

/// Keys per tile: a K or V tile (32 × 128 f32 = 16 KiB) stays in L1 while every row uses it.
const KV_TILE: usize = 32;
/// Query rows (tokens × heads of a group) per work item: enough rows to reuse each K/V tile many
/// times, few enough that their queries and accumulators stay in L2.
const ROWS_PER_ITEM: usize = 32;
/// Shortest KV chunk worth a task of its own when the KV length is split.
const MIN_KV_CHUNK: usize = 128;

/// Element type of the KV cache: f32, or [`f16`] / [`bf16`] (half the memory and bandwidth),
/// widened to f32 when read ([`Widen`], as the dense weights).
pub trait KvElem: Widen {
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
    flash_attention_batch(q, k, v, 1, |_| SeqAttention { pages: *pages, shape: *shape }, out, isa)
}

/// One sequence of a batched call: where its keys are and its shape.
#[derive(Debug, Clone, Copy)]
pub struct SeqAttention<'a> {
    pub pages: KvPages<'a>,
    pub shape: AttentionShape,
}

/// [`flash_attention`] for `n` sequences of one cache in one pass over the pool: sequence `i` is
/// `seq(i)` (a function, so that callers build nothing per call); its `q_len` query rows follow
/// sequence `i - 1`'s in `q` and `out`; all share `heads`, `kv_heads` and `head_dim`. Every
/// sequence is cut as it would be alone, so its output has the same bits as its own
/// [`flash_attention`] call; one call per step instead of one per sequence saves a pool round-trip
/// per sequence and layer and balances short and long sequences over the threads.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_batch<'s, T: KvElem>(q: &[f32], k: &[T], v: &[T], n: usize, seq: impl Fn(usize) -> SeqAttention<'s> + Sync, out: &mut [f32], isa: Isa) {
    if n == 0 {
        return;
    }
    let first = seq(0);
    let width = first.shape.heads * first.shape.head_dim;
    let mut row = 0;
    for s in (0..n).map(&seq) {
        let (a, b) = (&s.shape, &first.shape);
        assert!((a.heads, a.kv_heads, a.head_dim) == (b.heads, b.kv_heads, b.head_dim), "attention: a batch's sequences share their head shape ({a:?} vs {b:?})");
        a.check(q.len().saturating_sub(row * width), k.len(), v.len(), out.len().saturating_sub(row * width), &s.pages);
        row += a.q_len;
    }
    // Each sequence's plan from its own shape, as alone: its bits do not depend on its neighbours.
    let threads = crate::pool::current_threads();
    run(q, k, v, n, seq, out, isa, |shape| Plan::choose(shape, threads));
}

/// How one sequence is cut into work items.
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
        let items = shape.kv_heads * shape.q_len.div_ceil(Self::q_tile(shape));
        let kv_len = shape.kv_len().max(1);
        let target = 4 * threads;
        let chunks = if threads > 1 && items < target { target.div_ceil(items.max(1)).min(kv_len / MIN_KV_CHUNK).max(1) } else { 1 };
        Plan { q_tile: Self::q_tile(shape), kv_chunk: kv_len.div_ceil(chunks).next_multiple_of(KV_TILE) }
    }

    fn q_tile(shape: &AttentionShape) -> usize {
        (ROWS_PER_ITEM / shape.group()).clamp(1, shape.q_len.max(1))
    }
}

/// Where one sequence's work sits in a batched call (kept in a reused per-thread list, so a warm
/// call allocates nothing).
#[derive(Clone, Copy)]
struct SeqWork {
    plan: Plan,
    /// Its first query row in `q` / `out`.
    row: usize,
    /// Its first attend item; it has `groups * chunks` of them.
    item: usize,
    /// Its first merge item (one per group, when its keys are split) and first partial float.
    merge: usize,
    part: usize,
}

thread_local! {
    static WORK: Cell<Vec<SeqWork>> = const { Cell::new(Vec::new()) };
}

/// The batch with each sequence's plan from `plan_of` (tests force splits through here).
#[allow(clippy::too_many_arguments)]
fn run<'s, T: KvElem>(
    q: &[f32],
    k: &[T],
    v: &[T],
    n: usize,
    seq: impl Fn(usize) -> SeqAttention<'s> + Sync,
    out: &mut [f32],
    isa: Isa,
    plan_of: impl Fn(&AttentionShape) -> Plan,
) {
    let mut work = WORK.with(|w| w.take());
    work.clear();
    let (mut row, mut item, mut merge, mut part, mut max_rows, mut hd) = (0, 0, 0, 0, 0, 0);
    for s in (0..n).map(&seq) {
        let plan = plan_of(&s.shape);
        work.push(SeqWork { plan, row, item, merge, part });
        let p = Problem::new(q, k, v, s.pages, &s.shape, isa, plan);
        let (groups, chunks) = (s.shape.kv_heads * p.q_tiles(), p.chunks());
        row += s.shape.q_len;
        item += groups * chunks;
        if chunks > 1 {
            merge += groups;
            part += groups * chunks * p.part_len();
        }
        max_rows = max_rows.max(plan.q_tile * s.shape.group());
        hd = s.shape.head_dim;
    }
    // Item -> (sequence, its problem, its q / out rows' offset).
    let locate = |at: usize, key: fn(&SeqWork) -> usize| {
        let i = work.partition_point(|w| key(w) <= at) - 1;
        let (s, w) = (seq(i), work[i]);
        let width = s.shape.heads * s.shape.head_dim;
        (Problem::new(&q[w.row * width..], k, v, s.pages, &s.shape, isa, w.plan), w, w.row * width)
    };
    let dst = OutPtr::new(out);
    with_partials(part, |parts| {
        let parts_ptr = OutPtr::new(parts);
        with_scratches(max_rows, hd, |scratches| {
            parallel_for(item, |it| {
                let (p, w, at) = locate(it, |w| w.item);
                let chunks = p.chunks();
                let (kh, tokens) = p.group_of((it - w.item) / chunks);
                let c = (it - w.item) % chunks;
                let s = scratches.get();
                p.attend(kh, tokens.clone(), c * p.plan.kv_chunk..(c + 1) * p.plan.kv_chunk, s);
                if chunks == 1 {
                    // SAFETY: `check` sized `out`; this item alone writes its (tokens, heads) block.
                    unsafe { p.write_out(kh, tokens, s, dst.offset(at)) }
                } else {
                    let len = p.part_len();
                    // SAFETY: items own disjoint `len`-float parts inside `parts` (sized above).
                    let part = unsafe { std::slice::from_raw_parts_mut(parts_ptr.get().add(w.part + (it - w.item) * len), len) };
                    s.save(tokens.len() * p.shape.group(), p.shape.head_dim, part);
                }
            })
        });
        if merge > 0 {
            parallel_for(merge, |mi| {
                let (p, w, at) = locate(mi, |w| w.merge);
                let gi = mi - w.merge;
                let (kh, tokens) = p.group_of(gi);
                let span = p.chunks() * p.part_len();
                // SAFETY: as above, one writer per (tokens, heads) block.
                unsafe { p.merge(kh, tokens, &parts[w.part + gi * span..][..span], dst.offset(at)) }
            });
        }
    });
    WORK.with(|w| w.set(work));
}

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
    fn new(q: &'a [f32], k: &'a [T], v: &'a [T], pages: KvPages<'a>, shape: &AttentionShape, isa: Isa, plan: Plan) -> Self {
        let avx2 = cfg!(target_arch = "x86_64") && isa.uses_avx2() && shape.head_dim % 8 == 0 && Isa::Avx2.supported();
        Problem { q, k, v, pages, shape: *shape, plan, scale: 1.0 / (shape.head_dim as f32).sqrt(), avx2 }
    }

    fn q_tiles(&self) -> usize {
        self.shape.q_len.div_ceil(self.plan.q_tile)
    }

    /// KV chunks per group (1 when the keys are not split).
    fn chunks(&self) -> usize {
        self.shape.kv_len().div_ceil(self.plan.kv_chunk)
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
            // In a paged cache the next tile is in another block, somewhere else in the pool,
            // where the hardware prefetcher would only start once its first key misses.
            let next = j0 + nk;
            if next < end {
                let (nn, na) = (KV_TILE.min(end - next).min(self.pages.run(next)), self.pages.offset(kh, next, hd));
                crate::simd::prefetch(&self.k[na..][..nn * hd]);
                crate::simd::prefetch(&self.v[na..][..nn * hd]);
            }
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
            let dst = std::slice::from_raw_parts_mut(out.get().add((t * self.shape.heads + kh * g) * hd), g * hd);
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
                let dst = std::slice::from_raw_parts_mut(out.get().add((t * self.shape.heads + kh * g + hh) * hd), hd);
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

#[cfg(test)]
mod tests;
