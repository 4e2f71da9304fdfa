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
                let got = case.output(&k, &v, |q, k, v, p, o, s| run(q, k, v, 1, |_| SeqAttention { pages: *p, shape: *s }, o, isa, |_| plan));
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
    // 2 (head, tile) items for a target of 4 per thread: 4 chunks of 250 keys, rounded up to tiles.
    assert_eq!(decode.kv_chunk, 256, "{decode:?}");
    assert!(Plan::choose(&shape(1, 1000), 1).kv_chunk >= 1001, "one thread gains nothing from a split");
    assert!(Plan::choose(&shape(1, 100), 2).kv_chunk >= 101, "too short to split");
    assert!(Plan::choose(&shape(512, 0), 2).kv_chunk >= 512, "prefill has enough (head, tile) items");
    // 32 query rows per item: 4 tokens of a group of 8 heads (1 when the prompt is shorter).
    assert_eq!(Plan::choose(&shape(512, 0), 2).q_tile, 4);
    assert_eq!(Plan::choose(&shape(1, 1000), 2).q_tile, 1);
    // Exactly 4 items per thread is enough: Qwen3-0.6B's 8 KV heads decode unsplit on 2 threads.
    let eight = AttentionShape { kv_heads: 8, ..shape(1, 1000) };
    assert!(Plan::choose(&eight, 2).kv_chunk >= 1001, "8 items for 2 threads");
}

/// Several paged cases in one cache: each case's blocks moved after the previous cases' blocks.
fn one_cache(cases: &[Case]) -> (Vec<f32>, Vec<f32>, Vec<Vec<u32>>) {
    let (mut k, mut v, mut tables) = (Vec::new(), Vec::new(), Vec::new());
    for c in cases {
        assert_eq!(c.block_stride, cases[0].block_stride);
        let shift = (k.len() / c.block_stride) as u32;
        tables.push(c.table.iter().map(|b| b + shift).collect());
        k.extend_from_slice(&c.k);
        v.extend_from_slice(&c.v);
    }
    (k, v, tables)
}

#[test]
fn a_batch_gives_each_sequence_its_own_bits() {
    // A first token, two decodes whose KV splits alone (2 threads; neither first, so their items,
    // partials and merges sit at offsets: with 1 kv head, odd ones), prefill tiles, an empty sequence.
    for (heads, kv_heads) in [(16, 2), (8, 1)] {
        let cases: Vec<Case> = [(1, 0), (1, 1000), (40, 5), (0, 10), (1, 600), (3, 250), (17, 0)].iter().map(|&(n, start)| Case::paged(heads, kv_heads, 64, n, start)).collect();
        let (k, v, tables) = one_cache(&cases);
        let seqs: Vec<SeqAttention> = cases.iter().zip(&tables).map(|(c, t)| SeqAttention { pages: KvPages { table: t, ..c.pages() }, shape: c.shape }).collect();
        let q: Vec<f32> = cases.iter().flat_map(|c| c.q.iter().copied()).collect();
        let width = heads * 64;
        for isa in isas() {
            in_pools(|pool| {
                let mut batched = vec![f32::NAN; q.len()];
                flash_attention_batch(&q, &k, &v, seqs.len(), |i| seqs[i], &mut batched, isa);
                let mut row = 0;
                for (i, s) in seqs.iter().enumerate() {
                    let rows = s.shape.q_len * width;
                    let mut alone = vec![f32::NAN; rows];
                    flash_attention(&q[row..][..rows], &k, &v, &s.pages, &mut alone, &s.shape, isa);
                    let same = alone.iter().zip(&batched[row..][..rows]).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{isa:?} {pool}: sequence {i} ({:?})", s.shape);
                    row += rows;
                }
            });
        }
    }
}

#[test]
#[should_panic(expected = "share their head shape")]
fn a_batch_rejects_mixed_head_shapes() {
    let (a, b) = (Case::paged(16, 2, 64, 1, 10), Case::paged(16, 4, 64, 1, 10));
    let seqs = [SeqAttention { pages: a.pages(), shape: a.shape }, SeqAttention { pages: b.pages(), shape: b.shape }];
    let mut out = vec![0.0; 2 * 16 * 64];
    let q = [a.q.clone(), b.q.clone()].concat();
    flash_attention_batch(&q, &a.k, &a.v, 2, |i| seqs[i], &mut out, Isa::Portable);
}

/// Two one-token sequences (1024 floats of queries and outputs each) with `q_len` / `out_len`
/// floats of buffers.
fn batch_of_two(q_len: usize, out_len: usize) {
    let case = Case::paged(16, 2, 64, 1, 10);
    let seqs = [SeqAttention { pages: case.pages(), shape: case.shape }; 2];
    let (q, mut out) = (vec![0.5; q_len], vec![0.0; out_len]);
    flash_attention_batch(&q, &case.k, &case.v, 2, |i| seqs[i], &mut out, Isa::Portable);
}

#[test]
fn a_batch_fits_its_buffers() {
    batch_of_two(2048, 2048);
}

#[test]
#[should_panic(expected = "shorter than")]
fn a_batch_checks_the_last_sequences_queries() {
    // Room for one and a half: enough for the second alone, not after the first.
    batch_of_two(1536, 2048);
}

#[test]
#[should_panic(expected = "shorter than")]
fn a_batch_checks_the_last_sequences_outputs() {
    batch_of_two(2048, 1536);
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
