//! Per-sequence KV cache: for each layer one growable `[kv_heads, capacity, head_dim]` buffer for K
//! and one for V, in f32, f16 or bf16 (the attention kernel widens to f32 in registers). Capacity
//! doubles when full, so appends are amortised O(1) and no maximum length is reserved up front
//! (Qwen3's 40k context would cost gigabytes per sequence).
use candle_core::{Device, Result, Tensor};
use half::{bf16, f16};
use nano_qwen3_kernels::attention::KvElem;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl KvDtype {
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
    fn new(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => KvBuf::F32(Vec::new()),
            KvDtype::F16 => KvBuf::F16(Vec::new()),
            KvDtype::Bf16 => KvBuf::Bf16(Vec::new()),
        }
    }
}

fn regrow<T: Copy + Default>(buf: &mut Vec<T>, heads: usize, hd: usize, len: usize, old_cap: usize, new_cap: usize) {
    let mut next = vec![T::default(); heads * new_cap * hd];
    for h in 0..heads {
        next[h * new_cap * hd..][..len * hd].copy_from_slice(&buf[h * old_cap * hd..][..len * hd]);
    }
    *buf = next;
}

/// Scatter token-major rows (`n` rows of `heads * hd` values, row stride `stride`) into the
/// head-major cache at positions `at..at + n`.
fn scatter<T: KvElem>(buf: &mut [T], cap: usize, heads: usize, hd: usize, at: usize, rows: &[f32], n: usize, stride: usize) {
    for t in 0..n {
        let row = &rows[t * stride..][..heads * hd];
        for h in 0..heads {
            let dst = &mut buf[(h * cap + at + t) * hd..][..hd];
            for (d, s) in dst.iter_mut().zip(&row[h * hd..(h + 1) * hd]) {
                *d = T::from_f32(*s);
            }
        }
    }
}

pub struct KvCache {
    layers: Vec<(KvBuf, KvBuf)>,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    dtype: KvDtype,
    /// Shared counter of live KV bytes across all sequences of one engine.
    live_bytes: Arc<AtomicUsize>,
    my_bytes: usize,
    /// Activation buffers kept between forward calls (compile mode `reduce-overhead`).
    pub workspace: Option<crate::fast_forward::Workspace>,
}

impl KvCache {
    pub fn new(num_layers: usize, kv_heads: usize, head_dim: usize, dtype: KvDtype, live_bytes: Arc<AtomicUsize>) -> Self {
        Self {
            layers: (0..num_layers).map(|_| (KvBuf::new(dtype), KvBuf::new(dtype))).collect(),
            kv_heads,
            head_dim,
            capacity: 0,
            len: 0,
            dtype,
            live_bytes,
            my_bytes: 0,
            workspace: None,
        }
    }

    /// Tokens already cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.my_bytes
    }

    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Elements between consecutive heads in a layer's buffer.
    pub fn head_stride(&self) -> usize {
        self.capacity * self.head_dim
    }

    /// Make room for `extra` more tokens in every layer (before a forward call).
    pub fn reserve(&mut self, extra: usize) {
        let needed = self.len + extra;
        if needed <= self.capacity {
            return;
        }
        let new_cap = needed.max(self.capacity * 2).max(64).next_multiple_of(64);
        let (heads, hd, len, old) = (self.kv_heads, self.head_dim, self.len, self.capacity);
        for (k, v) in &mut self.layers {
            for b in [k, v] {
                match b {
                    KvBuf::F32(b) => regrow(b, heads, hd, len, old, new_cap),
                    KvBuf::F16(b) => regrow(b, heads, hd, len, old, new_cap),
                    KvBuf::Bf16(b) => regrow(b, heads, hd, len, old, new_cap),
                }
            }
        }
        let delta = 2 * self.layers.len() * (new_cap - old) * heads * hd * self.dtype.size();
        self.my_bytes += delta;
        self.live_bytes.fetch_add(delta, Ordering::Relaxed);
        self.capacity = new_cap;
    }

    /// Write the K and V rows of `n` new tokens (token-major, row stride `stride`) for `layer` at
    /// positions `len..len + n`. `reserve(n)` first; `commit(n)` after the last layer.
    pub fn write(&mut self, layer: usize, k: &[f32], v: &[f32], n: usize, stride: usize) {
        assert!(self.len + n <= self.capacity, "kv cache: reserve before writing");
        let (cap, heads, hd, at) = (self.capacity, self.kv_heads, self.head_dim, self.len);
        let (kb, vb) = &mut self.layers[layer];
        for (buf, rows) in [(kb, k), (vb, v)] {
            match buf {
                KvBuf::F32(b) => scatter(b, cap, heads, hd, at, rows, n, stride),
                KvBuf::F16(b) => scatter(b, cap, heads, hd, at, rows, n, stride),
                KvBuf::Bf16(b) => scatter(b, cap, heads, hd, at, rows, n, stride),
            }
        }
    }

    pub fn layer(&self, layer: usize) -> &(KvBuf, KvBuf) {
        &self.layers[layer]
    }

    /// Append `k`, `v` (`[kv_heads, n, head_dim]` tensors) for `layer` and return f32 copies of the
    /// whole cache `[kv_heads, len + n, head_dim]`: the tensor (reference) forward path.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (heads, n, hd) = k.dims3()?;
        let rows = |t: &Tensor| -> Result<Vec<f32>> { t.transpose(0, 1)?.contiguous()?.flatten_all()?.to_vec1::<f32>() };
        self.reserve(n);
        self.write(layer, &rows(k)?, &rows(v)?, n, heads * hd);
        let total = self.len + n;
        let (cap, dev) = (self.capacity, Device::Cpu);
        let dense = |b: &KvBuf| -> Result<Tensor> {
            let mut out = Vec::with_capacity(heads * total * hd);
            for h in 0..heads {
                let r = h * cap * hd..(h * cap + total) * hd;
                match b {
                    KvBuf::F32(b) => out.extend_from_slice(&b[r]),
                    KvBuf::F16(b) => out.extend(b[r].iter().map(|x| x.to_f32())),
                    KvBuf::Bf16(b) => out.extend(b[r].iter().map(|x| x.to_f32())),
                }
            }
            Tensor::from_vec(out, (heads, total, hd), &dev)
        };
        let (kb, vb) = &self.layers[layer];
        Ok((dense(kb)?, dense(vb)?))
    }

    pub fn commit(&mut self, n: usize) {
        self.len += n;
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        self.live_bytes.fetch_sub(self.my_bytes, Ordering::Relaxed);
    }
}
