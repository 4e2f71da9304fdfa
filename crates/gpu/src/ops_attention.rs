//! The batch of a step (each sequence's new tokens, positions and block table) and the ops that
//! read it: q/k RMSNorm + RoPE at the tokens' positions, the KV write into the paged pool, and
//! paged causal attention (split over the KV length, then merged).
use crate::context::KvLayer;
use crate::error::{GpuError, Result};
use crate::kernels::K;
use crate::ops_basic::{check_vec, check_view, grid_rows, u};
use crate::step::{Bind, Step};
use crate::tensor::{GpuTensor, View};
use crate::BLOCK_TOKENS;

/// Keys per attention split: fixed, so a row is cut the same way whatever its batch neighbours.
pub const ATTN_SPLIT_KEYS: usize = 256;
/// Query rows (tokens x heads of one KV group) per attention workgroup.
pub const ATTN_MAX_ROWS: usize = 16;

/// One sequence's share of a step: `len` new tokens at positions `start .. start + len`, whose
/// K/V go to (and earlier K/V come from) physical blocks `table[pos / 16]`, row `pos % 16`.
#[derive(Debug, Clone, Copy)]
pub struct SeqSpan<'a> {
    pub start: usize,
    pub len: usize,
    pub table: &'a [u32],
}

pub(crate) struct BatchMeta {
    pub t: usize,
    pub pos_off: u32,
    pub seq_off: u32,
    pub slot_off: u32,
    pub tab_off: u32,
    /// (first token, tokens, KV length after the step) per sequence.
    pub seqs: Vec<(usize, usize, usize)>,
    /// (tokens per tile, data offset, tile count), built once per step per tile size.
    pub tiles: Vec<(usize, u32, usize)>,
    pub max_block: u32,
}

impl Step<'_> {
    /// Declare the step's tokens: the sequences in batch order, their tokens flattened in that
    /// order (row `i` of every activation is the i-th token). Uploads positions, slots and block
    /// tables once for all layers.
    pub fn set_batch(&mut self, seqs: &[SeqSpan]) -> Result<()> {
        let t: usize = seqs.iter().map(|s| s.len).sum();
        let (mut pos, mut seq, mut slot) = (Vec::with_capacity(t), Vec::with_capacity(t), Vec::with_capacity(t));
        let mut meta = Vec::with_capacity(seqs.len());
        let mut max_block = 0;
        for (i, s) in seqs.iter().enumerate() {
            if s.table.len() * BLOCK_TOKENS < s.start + s.len {
                return Err(GpuError::Shape(format!(
                    "set_batch: sequence {i}'s block table covers {} tokens, it needs {}",
                    s.table.len() * BLOCK_TOKENS,
                    s.start + s.len
                )));
            }
            meta.push((pos.len(), s.len, s.start + s.len));
            for p in s.start..s.start + s.len {
                pos.push(u(p));
                seq.push(u(i));
                slot.push(s.table[p / BLOCK_TOKENS] * BLOCK_TOKENS as u32 + u(p % BLOCK_TOKENS));
            }
            max_block = max_block.max(s.table[..(s.start + s.len).div_ceil(BLOCK_TOKENS)].iter().copied().max().unwrap_or(0));
        }
        let pos_off = self.push_data(&pos);
        let seq_off = self.push_data(&seq);
        let slot_off = self.push_data(&slot);
        // Each sequence's table, then the table of where each table starts.
        let starts: Vec<u32> = seqs.iter().map(|s| self.push_data(s.table)).collect();
        let tab_off = self.push_data(&starts);
        self.batch = Some(BatchMeta { t, pos_off, seq_off, slot_off, tab_off, seqs: meta, tiles: Vec::new(), max_block });
        Ok(())
    }

    fn batch(&self, op: &str) -> Result<&BatchMeta> {
        self.batch.as_ref().ok_or_else(|| GpuError::Shape(format!("{op}: call set_batch first")))
    }

    /// Tokens of the batch (rows of the activations).
    pub fn batch_tokens(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.t)
    }

    /// In place on `heads` heads of `head_dim` in each batch row of `x`: RMSNorm with `norm`'s
    /// weights (Qwen3's q_norm / k_norm; None for Qwen2), then rotate-half RoPE with the
    /// token's position's row of `cos` / `sin` (`[positions, head_dim / 2]` f32 tables).
    pub fn head_norm_rope(&mut self, x: View, heads: usize, head_dim: usize, norm: Option<(&GpuTensor, f32)>, cos: &GpuTensor, sin: &GpuTensor) -> Result<()> {
        let max_pos = self.batch("head_norm_rope")?.seqs.iter().map(|s| s.2).max().unwrap_or(0);
        self.head_norm_rope_checked(x, heads, head_dim, norm, cos, sin, max_pos)
    }

    /// `rows_needed`: rows of the cos/sin tables the lookups reach.
    #[allow(clippy::too_many_arguments)]
    fn head_norm_rope_checked(&mut self, x: View, heads: usize, head_dim: usize, norm: Option<(&GpuTensor, f32)>, cos: &GpuTensor, sin: &GpuTensor, max_pos: usize) -> Result<()> {
        let b = self.batch("head_norm_rope")?;
        let (t, pos_off) = (b.t, b.pos_off);
        check_view("head_norm_rope", &x, t, heads * head_dim)?;
        check_vec("head_norm_rope cos", cos, max_pos * head_dim / 2)?;
        check_vec("head_norm_rope sin", sin, max_pos * head_dim / 2)?;
        if !head_dim.is_multiple_of(2) || cos.cols != head_dim / 2 {
            return Err(GpuError::Shape(format!("head_norm_rope: head_dim {head_dim} needs cos/sin rows of {}, got {}", head_dim / 2, cos.cols)));
        }
        let (wt, eps) = match norm {
            Some((w, eps)) => {
                check_vec("head_norm_rope weights", w, head_dim)?;
                (w, eps)
            }
            None => (cos, 0.0),
        };
        let p = [u(t), u(heads), u(head_dim), u(x.offset), u(x.stride), eps.to_bits(), norm.is_some() as u32, pos_off];
        let binds = vec![(1, Bind::part(x.t.single())), (2, Bind::part(wt.single())), (3, Bind::Data), (4, Bind::part(cos.single())), (5, Bind::part(sin.single()))];
        self.dispatch(K::HeadNormRope, binds, &p, [u(heads), u(t.min(65535)), u(t.div_ceil(65535).max(1))])
    }

    /// [`Step::head_norm_rope`] with `cos` / `sin` holding one row per batch token (row i for
    /// the batch's i-th token) instead of one per position.
    pub fn head_norm_rope_rows(&mut self, x: View, heads: usize, head_dim: usize, norm: Option<(&GpuTensor, f32)>, cos: &GpuTensor, sin: &GpuTensor) -> Result<()> {
        let t = self.batch("head_norm_rope_rows")?.t;
        let ids: Vec<u32> = (0..u(t)).collect();
        let at = self.push_data(&ids);
        let real = std::mem::replace(&mut self.batch.as_mut().unwrap().pos_off, at);
        let r = self.head_norm_rope_checked(x, heads, head_dim, norm, cos, sin, t);
        self.batch.as_mut().unwrap().pos_off = real;
        r
    }

    /// Every batch token's K and V rows (`kv_heads * head_dim` from each view) into the pool at
    /// its slot, rounded to the pool's element type (to nearest even).
    pub fn kv_write(&mut self, k: View, v: View, kv: &KvLayer) -> Result<()> {
        let b = self.batch("kv_write")?;
        let (t, slot_off) = (b.t, b.slot_off);
        if b.max_block as usize >= kv.blocks && t > 0 {
            return Err(GpuError::Shape(format!("kv_write: block {} out of a pool of {} blocks", b.max_block, kv.blocks)));
        }
        let w = kv.kv_heads * kv.head_dim;
        check_view("kv_write k", &k, t, w)?;
        check_view("kv_write v", &v, t, w)?;
        if !kv.head_dim.is_multiple_of(2) {
            return Err(GpuError::Shape(format!("kv_write: head_dim {} must be even", kv.head_dim)));
        }
        let p = [u(t), u(kv.kv_heads), u(kv.head_dim), u(k.offset), u(k.stride), u(v.offset), u(v.stride), slot_off];
        let binds = vec![
            (1, Bind::part(kv.k.single())),
            (2, Bind::part(kv.v.single())),
            (3, Bind::part(k.t.single())),
            (4, Bind::part(v.t.single())),
            (5, Bind::Data),
        ];
        self.dispatch(K::KvWrite(kv.dtype), binds, &p, grid_rows(w / 2, t))
    }

    /// Causal attention of every batch token over its sequence's keys `0 ..= pos` in `kv`
    /// (written by [`Step::kv_write`] first). `q`: rows of `heads * head_dim`; `out` likewise.
    /// Query head `h` uses KV head `h / (heads / kv_heads)`; scale `1 / sqrt(head_dim)`.
    pub fn attention(&mut self, q: View, kv: &KvLayer, heads: usize, out: View) -> Result<()> {
        let (hd, kvh) = (kv.head_dim, kv.kv_heads);
        if kvh == 0 || !heads.is_multiple_of(kvh) || heads / kvh > ATTN_MAX_ROWS || hd > 256 || hd == 0 {
            return Err(GpuError::Shape(format!(
                "attention: {heads} heads over {kvh} KV heads of {hd} (at most {ATTN_MAX_ROWS} heads per KV head, head_dim <= 256)"
            )));
        }
        let group = heads / kvh;
        let qt = (ATTN_MAX_ROWS / group).max(1);
        let b = self.batch("attention")?;
        let t = b.t;
        check_view("attention q", &q, t, heads * hd)?;
        check_view("attention out", &out, t, heads * hd)?;
        let max_len = b.seqs.iter().map(|s| s.2).max().unwrap_or(0);
        let splits = max_len.div_ceil(ATTN_SPLIT_KEYS).max(1);
        let (pos_off, seq_off, tab_off) = (b.pos_off, b.seq_off, b.tab_off);
        let (tiles_off, tiles) = self.tiles(qt);
        let direct = splits == 1;
        let scale = 1.0 / (hd as f32).sqrt();
        let p = [
            u(hd), u(kvh), u(group), u(q.offset), u(q.stride), u(out.offset), u(out.stride), scale.to_bits(),
            u(ATTN_SPLIT_KEYS), u(splits), tiles_off, pos_off, seq_off, tab_off, direct as u32,
        ];
        let target = if direct { Bind::part(out.t.single()) } else { Bind::Scratch };
        let binds = vec![
            (1, Bind::part(kv.k.single())),
            (2, Bind::part(kv.v.single())),
            (3, Bind::part(q.t.single())),
            (4, Bind::Data),
            (5, target),
        ];
        self.dispatch(K::Attention(kv.dtype), binds, &p, [u(tiles), u(kvh), u(splits)])?;
        if !direct {
            self.scratch_floats = self.scratch_floats.max(tiles * kvh * splits * ATTN_MAX_ROWS * (hd + 2));
            let p = [u(hd), u(kvh), u(group), u(splits), u(out.offset), u(out.stride), tiles_off];
            let binds = vec![(1, Bind::Scratch), (2, Bind::Data), (3, Bind::part(out.t.single()))];
            self.dispatch(K::AttnMerge, binds, &p, [u(tiles), u(kvh), u(ATTN_MAX_ROWS)])?;
        }
        Ok(())
    }

    /// The batch cut into tiles of at most `qt` tokens of one sequence: (data offset, count).
    fn tiles(&mut self, qt: usize) -> (u32, usize) {
        let b = self.batch.as_ref().unwrap();
        if let Some(&(_, off, n)) = b.tiles.iter().find(|x| x.0 == qt) {
            return (off, n);
        }
        let mut words = Vec::new();
        for &(first, len, _) in &b.seqs {
            let mut i = 0;
            while i < len {
                let n = qt.min(len - i);
                words.extend_from_slice(&[u(first + i), u(n)]);
                i += n;
            }
        }
        let n = words.len() / 2;
        let off = self.push_data(&words);
        self.batch.as_mut().unwrap().tiles.push((qt, off, n));
        (off, n)
    }
}
