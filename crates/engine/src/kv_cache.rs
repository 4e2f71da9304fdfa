//! Per-sequence KV cache: one growable [kv_heads, capacity, head_dim] buffer per layer for K and V.
//! Capacity doubles when full, so appends are amortised O(1) and no maximum length is reserved up
//! front (Qwen3's 40k context would cost gigabytes per sequence).
use candle_core::{DType, Device, Result, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    /// Shared counter of live KV bytes across all sequences of one engine.
    live_bytes: Arc<AtomicUsize>,
    my_bytes: usize,
}

impl KvCache {
    pub fn new(num_layers: usize, live_bytes: Arc<AtomicUsize>) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), len: 0, live_bytes, my_bytes: 0 }
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

    /// Append `k`, `v` ([kv_heads, n, head_dim]) for `layer`; returns views of the whole cache.
    /// Call for every layer in order with the same `n`; `commit(n)` after the last layer.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (heads, n, hd) = k.dims3()?;
        let needed = self.len + n;
        let slot = &mut self.layers[layer];
        let cap = slot.as_ref().map(|(k, _)| k.dims()[1]).unwrap_or(0);
        if needed > cap {
            let new_cap = needed.max(cap * 2).max(64).next_multiple_of(64);
            let grow = |old: Option<&Tensor>, dtype: DType, dev: &Device| -> Result<Tensor> {
                let t = Tensor::zeros((heads, new_cap, hd), dtype, dev)?;
                if let Some(old) = old {
                    if self.len > 0 {
                        t.slice_set(&old.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    }
                }
                Ok(t)
            };
            let nk = grow(slot.as_ref().map(|s| &s.0), k.dtype(), k.device())?;
            let nv = grow(slot.as_ref().map(|s| &s.1), v.dtype(), v.device())?;
            let delta = 2 * (new_cap - cap) * heads * hd * k.dtype().size_in_bytes();
            self.my_bytes += delta;
            self.live_bytes.fetch_add(delta, Ordering::Relaxed);
            *slot = Some((nk, nv));
        }
        let (ck, cv) = slot.as_ref().expect("allocated above");
        ck.slice_set(&k.contiguous()?, 1, self.len)?;
        cv.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((ck.narrow(1, 0, needed)?, cv.narrow(1, 0, needed)?))
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
