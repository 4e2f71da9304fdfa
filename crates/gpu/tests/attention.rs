//! The step's batch ops against plain references: q/k RMSNorm + RoPE at per-token positions,
//! the KV write into the paged pool (f32 / f16 / bf16, read back and decoded), and paged causal
//! attention (decode and prefill chunks, GQA, 1 and several KV heads, head_dim 64 and 128,
//! block tables out of order, KV lengths past one split).
mod common;
use common::{assert_close, ctx, rand, seed};
use half::{bf16, f16};
use nano_qwen3_gpu::*;

fn round(d: KvDtype, v: f32) -> f32 {
    match d {
        KvDtype::F32 => v,
        KvDtype::F16 => f16::from_f32(v).to_f32(),
        KvDtype::Bf16 => bf16::from_f32(v).to_f32(),
    }
}

/// The pool's elements decoded from its raw words.
fn decode_pool(d: KvDtype, words: &[u32]) -> Vec<f32> {
    match d {
        KvDtype::F32 => words.iter().map(|&w| f32::from_bits(w)).collect(),
        KvDtype::F16 => words.iter().flat_map(|&w| [f16::from_bits(w as u16).to_f32(), f16::from_bits((w >> 16) as u16).to_f32()]).collect(),
        KvDtype::Bf16 => words.iter().flat_map(|&w| [bf16::from_bits(w as u16).to_f32(), bf16::from_bits((w >> 16) as u16).to_f32()]).collect(),
    }
}

/// Large enough that dropping it would show.
const EPS: f32 = 0.01;

#[test]
fn head_norm_rope_matches_cpu() {
    let Some(ctx) = ctx() else { return };
    for (hd, heads, with_norm) in [(64, 3, true), (128, 2, true), (64, 2, false)] {
        let s = seed() ^ (hd * heads) as u64;
        let half = hd / 2;
        let positions = 40;
        // A cos/sin table as the engine builds it: position * inv_freq in f32.
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32)).collect();
        let cos: Vec<f32> = (0..positions).flat_map(|p| inv.iter().map(move |f| (p as f32 * f).cos())).collect();
        let sin: Vec<f32> = (0..positions).flat_map(|p| inv.iter().map(move |f| (p as f32 * f).sin())).collect();
        let stride = heads * hd + 7; // q inside a wider fused row
        let tables: [&[u32]; 2] = [&[1, 0], &[2, 3]];
        let spans = [SeqSpan { start: 3, len: 2, table: tables[0] }, SeqSpan { start: 30, len: 1, table: tables[1] }];
        let pos = [3usize, 4, 30];
        let x = rand(3 * stride, s);
        let w = rand(hd, s + 1);
        let xt = ctx.upload_f32(3, stride, &x).unwrap();
        let (ct, st, wt) = (ctx.upload_f32(positions, half, &cos).unwrap(), ctx.upload_f32(positions, half, &sin).unwrap(), ctx.upload_f32(1, hd, &w).unwrap());
        let mut step = ctx.step();
        step.set_batch(&spans).unwrap();
        step.head_norm_rope(xt.view(), heads, hd, with_norm.then_some((&wt, EPS)), &ct, &st).unwrap();
        let h = step.read_f32(&xt, 0, 3 * stride).unwrap();
        let got = ctx.run(step).unwrap().f32(h);
        let mut want = x.clone();
        for (t, &p) in pos.iter().enumerate() {
            for hh in 0..heads {
                let b = t * stride + hh * hd;
                let head = &mut want[b..b + hd];
                let r = if with_norm { 1.0 / (head.iter().map(|v| v * v).sum::<f32>() / hd as f32 + EPS).sqrt() } else { 1.0 };
                for i in 0..half {
                    let (mut x1, mut x2) = (head[i], head[i + half]);
                    if with_norm {
                        x1 *= r * w[i];
                        x2 *= r * w[i + half];
                    }
                    let (c, sn) = (cos[p * half + i], sin[p * half + i]);
                    head[i] = x1 * c - x2 * sn;
                    head[i + half] = x2 * c + x1 * sn;
                }
            }
        }
        assert_close(&format!("head_norm_rope hd={hd} norm={with_norm}"), &got, &want, 1e-5);
        // The same with one cos/sin row per batch token instead of a table by position.
        let rows_of = |tab: &[f32]| pos.iter().flat_map(|&p| tab[p * half..(p + 1) * half].to_vec()).collect::<Vec<f32>>();
        let (cr, sr) = (ctx.upload_f32(3, half, &rows_of(&cos)).unwrap(), ctx.upload_f32(3, half, &rows_of(&sin)).unwrap());
        let xt = ctx.upload_f32(3, stride, &x).unwrap();
        let mut step = ctx.step();
        step.set_batch(&spans).unwrap();
        step.head_norm_rope_rows(xt.view(), heads, hd, with_norm.then_some((&wt, EPS)), &cr, &sr).unwrap();
        let h = step.read_f32(&xt, 0, 3 * stride).unwrap();
        assert_eq!(ctx.run(step).unwrap().f32(h), got, "per-token rows = table by position");
    }
}

/// One attention case: sequences (history length, new tokens), the pool in `dtype`.
struct Case {
    dtype: KvDtype,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    seqs: Vec<(usize, usize)>,
}

fn run_case(ctx: &GpuContext, c: &Case, salt: u64) {
    let s = seed() ^ salt;
    let (hd, kvh, heads) = (c.hd, c.kv_heads, c.heads);
    let blocks_of = |n: usize| n.div_ceil(BLOCK_TOKENS);
    let total_blocks: usize = c.seqs.iter().map(|&(h, n)| blocks_of(h + n)).sum::<usize>() + 2;
    // Block tables out of order: physical blocks handed out in a shuffled order.
    let mut free: Vec<u32> = (0..total_blocks as u32).collect();
    let r = rand(free.len(), s);
    free.sort_by(|a, b| r[*a as usize].partial_cmp(&r[*b as usize]).unwrap());
    let mut tables = Vec::new();
    for &(h, n) in &c.seqs {
        tables.push(free.drain(..blocks_of(h + n)).collect::<Vec<u32>>());
    }
    let kv = ctx.kv_layer(c.dtype, total_blocks, kvh, hd).unwrap();
    let w = kvh * hd;
    // Every sequence's K and V rows for all its positions (history + new).
    let keys: Vec<Vec<f32>> = c.seqs.iter().enumerate().map(|(i, &(h, n))| rand((h + n) * w, s + 10 + i as u64)).collect();
    let vals: Vec<Vec<f32>> = c.seqs.iter().enumerate().map(|(i, &(h, n))| rand((h + n) * w, s + 20 + i as u64)).collect();
    // Step 1: the history, written through the pool as a prefill would.
    let write = |spans: &[SeqSpan], rows: Vec<f32>, vrows: Vec<f32>| {
        let t: usize = spans.iter().map(|s| s.len).sum();
        if t == 0 {
            return;
        }
        let (kt, vt) = (ctx.upload_f32(t, w, &rows).unwrap(), ctx.upload_f32(t, w, &vrows).unwrap());
        let mut step = ctx.step();
        step.set_batch(spans).unwrap();
        step.kv_write(kt.view(), vt.view(), &kv).unwrap();
        ctx.run(step).unwrap();
    };
    let spans: Vec<SeqSpan> = c.seqs.iter().zip(&tables).map(|(&(h, _), t)| SeqSpan { start: 0, len: h, table: t }).collect();
    let hist = |src: &Vec<Vec<f32>>| c.seqs.iter().zip(src).flat_map(|(&(h, _), k)| k[..h * w].to_vec()).collect::<Vec<f32>>();
    write(&spans, hist(&keys), hist(&vals));
    // Step 2: the new tokens: q/k/v in one fused row, KV write, attention.
    let spans: Vec<SeqSpan> = c.seqs.iter().zip(&tables).map(|(&(h, n), t)| SeqSpan { start: h, len: n, table: t }).collect();
    let t: usize = c.seqs.iter().map(|s| s.1).sum();
    let stride = heads * hd + 2 * w;
    let q = rand(t * heads * hd, s + 3);
    let mut qkv = vec![0f32; t * stride];
    let mut row = 0;
    for (i, &(h, n)) in c.seqs.iter().enumerate() {
        for j in 0..n {
            qkv[row * stride..][..heads * hd].copy_from_slice(&q[row * heads * hd..(row + 1) * heads * hd]);
            qkv[row * stride + heads * hd..][..w].copy_from_slice(&keys[i][(h + j) * w..(h + j + 1) * w]);
            qkv[row * stride + heads * hd + w..][..w].copy_from_slice(&vals[i][(h + j) * w..(h + j + 1) * w]);
            row += 1;
        }
    }
    let qkvt = ctx.upload_f32(t, stride, &qkv).unwrap();
    let out = ctx.zeros(DType::F32, t, heads * hd).unwrap();
    let mut step = ctx.step();
    step.set_batch(&spans).unwrap();
    step.kv_write(qkvt.cols_from(heads * hd), qkvt.cols_from(heads * hd + w), &kv).unwrap();
    step.attention(qkvt.view(), &kv, heads, out.view()).unwrap();
    let ho = step.read_f32(&out, 0, t * heads * hd).unwrap();
    let hk = step.read_words(&kv.k).unwrap();
    let res = ctx.run(step).unwrap();
    // The pool holds every key at its slot, rounded to the pool's type.
    let pool = decode_pool(c.dtype, res.u32(hk));
    for (i, &(h, n)) in c.seqs.iter().enumerate() {
        for p in 0..h + n {
            for kh in 0..kvh {
                let at = ((tables[i][p / 16] as usize * kvh + kh) * 16 + p % 16) * hd;
                for d in 0..hd {
                    let want = round(c.dtype, keys[i][p * w + kh * hd + d]);
                    assert_eq!(pool[at + d], want, "{:?} pool: seq {i} pos {p} head {kh} dim {d}", c.dtype);
                }
            }
        }
    }
    // Attention reference in f64 over the rounded keys and values.
    let got = res.f32(ho);
    let mut want = vec![0f32; t * heads * hd];
    let mut row = 0;
    let group = heads / kvh;
    for (i, &(h, n)) in c.seqs.iter().enumerate() {
        for j in 0..n {
            let p = h + j;
            for hh in 0..heads {
                let kh = hh / group;
                let qv = &q[row * heads * hd + hh * hd..][..hd];
                let sc: Vec<f64> = (0..=p)
                    .map(|jj| (0..hd).map(|d| qv[d] as f64 * round(c.dtype, keys[i][jj * w + kh * hd + d]) as f64).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
                let l: f64 = e.iter().sum();
                for d in 0..hd {
                    let a: f64 = (0..=p).map(|jj| e[jj] * round(c.dtype, vals[i][jj * w + kh * hd + d]) as f64).sum();
                    want[row * heads * hd + hh * hd + d] = (a / l) as f32;
                }
            }
            row += 1;
        }
    }
    assert_close(&format!("attention {:?} heads {heads}/{kvh} hd {hd} seqs {:?}", c.dtype, c.seqs), &got, &want, 1e-5);
}

#[test]
fn decode_batch_gqa_f16_pool() {
    let Some(ctx) = ctx() else { return };
    // Three decode rows of different lengths, one past a split (256 keys); 2 heads per KV head.
    run_case(ctx, &Case { dtype: KvDtype::F16, heads: 4, kv_heads: 2, hd: 128, seqs: vec![(5, 1), (300, 1), (16, 1)] }, 1);
}

#[test]
fn prefill_chunks_mixed_with_decode() {
    let Some(ctx) = ctx() else { return };
    // A first prefill chunk, a later chunk (history 20), and a decode row; 7 heads on one KV head.
    run_case(ctx, &Case { dtype: KvDtype::F32, heads: 7, kv_heads: 1, hd: 64, seqs: vec![(0, 19), (20, 9), (3, 1)] }, 2);
}

#[test]
fn prefill_past_a_split_bf16_pool() {
    let Some(ctx) = ctx() else { return };
    run_case(ctx, &Case { dtype: KvDtype::Bf16, heads: 2, kv_heads: 2, hd: 64, seqs: vec![(250, 12)] }, 3);
}

/// A row's result does not depend on its batch neighbours: the same sequence alone and next to
/// a longer one (which adds splits to the dispatch) gives the same bits.
#[test]
fn rows_independent_of_batch() {
    let Some(ctx) = ctx() else { return };
    let (heads, kvh, hd) = (4, 2, 64);
    let w = kvh * hd;
    let kv = ctx.kv_layer(KvDtype::F32, 41, kvh, hd).unwrap();
    let (ta, tb): (Vec<u32>, Vec<u32>) = ((0..3).collect(), (3..41).collect());
    let (len_a, len_b) = (40, 600);
    let ka = rand(len_a * w, seed() ^ 90);
    let kb = rand(len_b * w, seed() ^ 91);
    let (kat, kbt) = (ctx.upload_f32(len_a, w, &ka).unwrap(), ctx.upload_f32(len_b, w, &kb).unwrap());
    for (kt, t, len) in [(&kat, &ta, len_a), (&kbt, &tb, len_b)] {
        let mut step = ctx.step();
        step.set_batch(&[SeqSpan { start: 0, len, table: t }]).unwrap();
        step.kv_write(kt.view(), kt.view(), &kv).unwrap();
        ctx.run(step).unwrap();
    }
    let q = ctx.upload_f32(2, heads * hd, &rand(2 * heads * hd, seed() ^ 92)).unwrap();
    let out = ctx.zeros(DType::F32, 2, heads * hd).unwrap();
    let mut rows = Vec::new();
    for batch in [vec![SeqSpan { start: len_a - 1, len: 1, table: &ta }], vec![SeqSpan { start: len_a - 1, len: 1, table: &ta }, SeqSpan { start: len_b - 1, len: 1, table: &tb }]] {
        let mut step = ctx.step();
        step.set_batch(&batch).unwrap();
        step.attention(q.view(), &kv, heads, out.view()).unwrap();
        let h = step.read_f32(&out, 0, heads * hd).unwrap();
        rows.push(ctx.run(step).unwrap().f32(h));
    }
    assert_eq!(rows[0], rows[1]);
}

/// The fixtures' head_dim (32: half the invocations own no lane) and the largest supported (256).
#[test]
fn head_dims_32_and_256() {
    let Some(ctx) = ctx() else { return };
    run_case(ctx, &Case { dtype: KvDtype::F16, heads: 4, kv_heads: 2, hd: 32, seqs: vec![(0, 5), (7, 1)] }, 4);
    run_case(ctx, &Case { dtype: KvDtype::F32, heads: 2, kv_heads: 1, hd: 256, seqs: vec![(3, 2)] }, 5);
}
