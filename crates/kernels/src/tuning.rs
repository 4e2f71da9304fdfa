//! Tiling choices of the matmul kernels, per matrix shape: how many tasks per thread a matmul is
//! cut into (load balance against dispatch cost) and how many activation rows a task keeps hot in
//! L2 while it sweeps its weights (prefill). Each kernel has fixed defaults; compile mode
//! max-autotune measures the candidates per shape at load and records the winners here.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tiling {
    pub tasks_per_thread: usize,
    /// Activation rows per L2 block (a multiple of every kernel's register tile height).
    pub m_block: usize,
}

/// One matmul shape on one pool size; `decode`: a single activation row (m = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShapeKey {
    pub kernel: &'static str,
    pub n: usize,
    pub k: usize,
    pub threads: usize,
    pub decode: bool,
}

impl Tiling {
    /// What max-autotune tries: the split for every shape, the row block only where m > 1 (it
    /// includes every kernel's default).
    pub fn candidates(decode: bool) -> Vec<Tiling> {
        let blocks: &[usize] = if decode { &[32] } else { &[16, 32, 48, 64] };
        let mut out = Vec::new();
        for &tasks_per_thread in &[1, 2, 4, 8, 16] {
            for &m_block in blocks {
                out.push(Tiling { tasks_per_thread, m_block });
            }
        }
        out
    }
}

fn table() -> &'static RwLock<HashMap<ShapeKey, Tiling>> {
    static TABLE: OnceLock<RwLock<HashMap<ShapeKey, Tiling>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Set once anything is tuned, so untuned processes skip the lookup.
static ANY: AtomicBool = AtomicBool::new(false);

/// The tiling for this shape: tuned if max-autotune recorded one, else `default`.
pub fn tiling_for(key: ShapeKey, default: Tiling) -> Tiling {
    if !ANY.load(Ordering::Relaxed) {
        return default;
    }
    table().read().unwrap_or_else(|e| e.into_inner()).get(&key).copied().unwrap_or(default)
}

/// Record `tiling` for `key` (`None`: back to the kernel's default).
pub fn set_tiling(key: ShapeKey, tiling: Option<Tiling>) {
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    match tiling {
        Some(v) => {
            t.insert(key, v);
            ANY.store(true, Ordering::Relaxed);
        }
        None => {
            t.remove(&key);
        }
    }
}

/// Output rows per task: `units` (rows, or row groups) split into `threads * tasks_per_thread`
/// pieces, each a multiple of `align` units.
pub(crate) fn chunk_len(units: usize, threads: usize, tiling: Tiling, align: usize) -> usize {
    units.div_ceil(threads * tiling.tasks_per_thread.max(1)).next_multiple_of(align).max(align)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_data;
    use crate::repack::{Q4x8Matrix, Q8x8Matrix};
    use crate::{linear, Q4Matrix, Q8Matrix, QuantMatrix, Weights};
    use half::bf16;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Every candidate tiling gives the same bits as the default, for every kernel, in a 3-thread
    /// pool (odd shapes: a partial last group, a partial last row block).
    #[test]
    fn results_do_not_depend_on_the_tiling() {
        let (n, k) = (203, 96);
        let w = test_data(n * k, 5);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let q8 = Q8Matrix::quantize(&w, n, k);
        let q4 = Q4Matrix::quantize_weighted(&w, n, k, None);
        let quant: Vec<Box<dyn QuantMatrix>> =
            vec![Box::new(Q8x8Matrix::from_q8(&q8)), Box::new(Q4x8Matrix::from_q4(&q4)), Box::new(q8), Box::new(q4)];
        let isa = crate::active_isa();
        let pool = crate::pool::ThreadPool::new(3).unwrap();
        pool.install(|| {
            for m in [1, 70] {
                let x = test_data(m * k, 9 + m as u64);
                let run = |name: &'static str| {
                    let mut y = vec![0f32; m * n];
                    match name {
                        "dense-f32" => linear(&x, Weights::F32(&w), m, k, n, &mut y, isa),
                        "dense-bf16" => linear(&x, Weights::Bf16(&wb), m, k, n, &mut y, isa),
                        _ => quant.iter().find(|q| q.name() == name).unwrap().linear(&x, m, &mut y, isa),
                    }
                    bits(&y)
                };
                let names = ["dense-f32", "dense-bf16"].into_iter().chain(quant.iter().map(|q| q.name()));
                for name in names {
                    let want = run(name);
                    let key = ShapeKey { kernel: name, n, k, threads: 3, decode: m == 1 };
                    for t in Tiling::candidates(m == 1) {
                        set_tiling(key, Some(t));
                        assert_eq!(run(name), want, "{name} m={m} {t:?}");
                    }
                    set_tiling(key, None);
                }
            }
        });
    }
}
