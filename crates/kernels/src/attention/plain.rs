//! Plain causal GQA attention: for each head the scores against every visible key are
//! materialised, soft-maxed, then used to weight V. The `useFlashAttention: false` path, and the
//! reference the flash kernel is tested against.
use super::{AttentionShape, KvElem, KvPages};
use crate::pool::parallel_chunks_mut;

/// Same contract as [`super::flash_attention`]; `O(q_len · kv_len)` scratch per head.
pub fn plain_attention<T: KvElem>(q: &[f32], k: &[T], v: &[T], pages: &KvPages, out: &mut [f32], s: &AttentionShape) {
    s.check(q.len(), k.len(), v.len(), out.len(), pages);
    let (hd, n, total) = (s.head_dim, s.q_len, s.kv_len());
    if n == 0 {
        return;
    }
    let scale = 1.0 / (hd as f32).sqrt();
    // Head-major scratch ([heads][n][hd]): each task owns one head's rows.
    let mut per_head = vec![0f32; s.heads * n * hd];
    parallel_chunks_mut(&mut per_head, n * hd, |h, o| {
        let kh = h / s.group();
        let at = |j: usize| pages.offset(kh, j, hd);
        let mut scores = vec![0f32; total];
        for i in 0..n {
            let qi = &q[(i * s.heads + h) * hd..][..hd];
            let visible = &mut scores[..s.start + i + 1];
            for (j, sc) in visible.iter_mut().enumerate() {
                *sc = qi.iter().zip(&k[at(j)..][..hd]).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale;
            }
            let m = visible.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for sc in visible.iter_mut() {
                *sc = (*sc - m).exp();
                sum += *sc;
            }
            let oi = &mut o[i * hd..(i + 1) * hd];
            for (j, p) in visible.iter().enumerate() {
                for (o, vv) in oi.iter_mut().zip(&v[at(j)..][..hd]) {
                    *o += p / sum * vv.to_f32();
                }
            }
        }
    });
    for (h, o) in per_head.chunks_exact(n * hd).enumerate() {
        for i in 0..n {
            out[(i * s.heads + h) * hd..][..hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
    }
}
