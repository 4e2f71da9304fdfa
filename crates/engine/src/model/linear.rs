//! Weight matrices as the model holds them: one format per matrix ([`Linear`]), and groups of
//! projections that read the same input ([`Proj`]: q/k/v, gate/up), stacked into one matrix when
//! fused kernels are on so one matmul (and one activation quantization) serves all of them.
use candle_core::{Storage, Tensor};
use nano_qwen3_kernels::repack::{Q4x8Matrix, Q8x8Matrix};
use nano_qwen3_kernels::{active_isa, BlockQ4, BlockQ8, GgmlMatrix, Q4Matrix, Q8Matrix, QuantLinearOp, QuantMatrix, Weights};
use std::borrow::Cow;
use std::sync::Arc;

/// A weight matrix [out, in] (HF layout) in the plan's format.
pub enum Linear {
    /// f32 / bf16 / f16 weights, f32 activations and accumulation.
    Dense(Tensor),
    /// Q8_0 blocks, activations quantized per token at run time (or with calibrated scales).
    Q8(Arc<Q8Matrix>),
    /// Q4_0 blocks, int8 activations at run time.
    Q4(Arc<Q4Matrix>),
    /// The same blocks repacked 8 rows interleaved (`useChannelsLast`): one vector holds the
    /// same 4 input features of 8 rows, so 8 outputs accumulate in one register.
    Q8x8(Arc<Q8x8Matrix>),
    Q4x8(Arc<Q4x8Matrix>),
    /// A GGUF block format run as stored (Q4_K, Q5_K, Q6_K, Q5_0, Q4_1, Q5_1), always in 8-row
    /// units; int8 activations per block of 256 (k-quants) or 32.
    Ggml(Arc<GgmlMatrix>),
}

/// A loaded tensor as `export` sees it: the data in its current format.
pub enum ExportData<'a> {
    /// f32 / bf16 / f16 tensor, HF shape.
    Dense(Tensor),
    /// Borrowed from the model, or owned when the model holds them repacked.
    Q8 { blocks: Cow<'a, [BlockQ8]>, n: usize, k: usize },
    Q4 { blocks: Cow<'a, [BlockQ4]>, n: usize, k: usize },
}

/// Rows `start..start + n` of a row-major block matrix with `k / per_block` blocks per row.
fn block_rows<T>(blocks: &[T], k: usize, per_block: usize, start: usize, n: usize) -> &[T] {
    let bpr = k / per_block;
    &blocks[start * bpr..(start + n) * bpr]
}

/// Rows concatenated; None when the row lengths differ.
fn stack_blocks<T: Copy>(parts: &[(&[T], usize, usize)]) -> Option<(Vec<T>, usize, usize)> {
    let k = parts.first()?.2;
    if parts.iter().any(|p| p.2 != k) {
        return None;
    }
    Some((parts.iter().flat_map(|p| p.0.iter().copied()).collect(), parts.iter().map(|p| p.1).sum(), k))
}

/// A contiguous 2-D CPU weight tensor's elements, as the dense kernels take them.
fn with_dense<R>(w: &Tensor, f: impl FnOnce(Weights) -> R) -> R {
    let (n, k) = (w.dims()[0], w.dims()[1]);
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { panic!("linear: weights must be on the CPU") };
    let off = layout.start_offset();
    f(match cpu {
        candle_core::CpuStorage::F32(v) => Weights::F32(&v[off..off + n * k]),
        candle_core::CpuStorage::BF16(v) => Weights::Bf16(&v[off..off + n * k]),
        candle_core::CpuStorage::F16(v) => Weights::F16(&v[off..off + n * k]),
        _ => panic!("linear: unsupported weight dtype {:?}", w.dtype()),
    })
}

impl Linear {
    /// The block formats behind their shared interface (all but export, stacking and static scales).
    fn quant(&self) -> Option<Arc<dyn QuantMatrix>> {
        match self {
            Linear::Dense(_) => None,
            Linear::Q8(q) => Some(q.clone()),
            Linear::Q4(q) => Some(q.clone()),
            Linear::Q8x8(q) => Some(q.clone()),
            Linear::Q4x8(q) => Some(q.clone()),
            Linear::Ggml(q) => Some(q.clone()),
        }
    }

    /// Output features.
    pub fn n(&self) -> usize {
        match (self, self.quant()) {
            (Linear::Dense(w), _) => w.dims()[0],
            (_, q) => q.map_or(0, |q| q.n()),
        }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        match (self, self.quant()) {
            (_, Some(q)) => x.apply_op1_no_bwd(&QuantLinearOp(q)),
            (Linear::Dense(w), None) => x.apply_op2_no_bwd(w, &nano_qwen3_kernels::LinearOp),
            _ => unreachable!("only dense matrices have no block format"),
        }
    }

    /// `y[m, n] = x[m, k] · Wᵀ` on plain slices (the fast forward path).
    pub fn forward_slice(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let isa = active_isa();
        if let Some(q) = self.quant() {
            return q.linear(x, m, y, isa);
        }
        let Linear::Dense(w) = self else { unreachable!("only dense matrices have no block format") };
        let (n, k) = (w.dims()[0], w.dims()[1]);
        with_dense(w, |weights| nano_qwen3_kernels::linear(x, weights, m, k, n, y, isa));
    }

    /// Input features.
    pub fn k(&self) -> usize {
        match (self, self.quant()) {
            (Linear::Dense(w), _) => w.dims()[1],
            (_, q) => q.map_or(0, |q| q.k()),
        }
    }

    /// The kernel that multiplies by this matrix (tuning keys).
    pub fn kernel_name(&self) -> &'static str {
        match (self, self.quant()) {
            (Linear::Dense(w), _) => with_dense(w, |w| w.kernel_name()),
            (_, q) => q.map_or("none", |q| q.name()),
        }
    }

    /// Stacked gate/up rows (`n = 2 inter`): `gu = x · Wᵀ` and `act = silu(gate) * up`, in the
    /// matmul's epilogue where the kernel has one (repacked int8 / int4), else as a second pass.
    pub fn forward_swiglu_slice(&self, x: &[f32], m: usize, gu: &mut [f32], act: &mut [f32]) {
        match self.quant() {
            Some(q) => q.linear_swiglu(x, m, gu, act, active_isa()),
            None => {
                self.forward_slice(x, m, gu);
                let inter = self.n() / 2;
                nano_qwen3_kernels::fused::silu_mul(&gu[..m * 2 * inter], inter, &mut act[..m * inter]);
            }
        }
    }

    pub fn bytes(&self) -> usize {
        match (self, self.quant()) {
            (Linear::Dense(w), _) => w.elem_count() * w.dtype().size_in_bytes(),
            (_, q) => q.map_or(0, |q| q.bytes()),
        }
    }

    pub fn format(&self) -> String {
        match self {
            Linear::Dense(w) => format!("{:?}", w.dtype()).to_lowercase(),
            Linear::Q8(q) if q.act_scales.is_some() => "q8_0 (static activations)".into(),
            Linear::Q8x8(q) if q.act_scales.is_some() => "q8_0 (static activations)".into(),
            Linear::Q8(_) | Linear::Q8x8(_) => "q8_0".into(),
            Linear::Q4x8(q) if q.group_blocks > 1 => format!("q4_0 (one scale per {} weights)", q.group_blocks * 32),
            Linear::Q4(_) | Linear::Q4x8(_) => "q4_0".into(),
            Linear::Ggml(q) => q.format.name().into(),
        }
    }

    /// Rows `ids` as f32 into `out` (len ids.len() * in): the embedding lookup on slices.
    pub fn rows_into(&self, ids: &[u32], out: &mut [f32]) -> candle_core::Result<()> {
        match (self, self.quant()) {
            (Linear::Dense(w), _) => {
                // Straight from the storage: the decode step's lookup allocates nothing.
                let k = w.dims()[1];
                with_dense(w, |weights| {
                    for (&id, row) in ids.iter().zip(out.chunks_exact_mut(k)) {
                        let at = id as usize * k;
                        match weights {
                            Weights::F32(v) => row.copy_from_slice(&v[at..at + k]),
                            Weights::Bf16(v) => row.iter_mut().zip(&v[at..at + k]).for_each(|(o, x)| *o = x.to_f32()),
                            Weights::F16(v) => row.iter_mut().zip(&v[at..at + k]).for_each(|(o, x)| *o = x.to_f32()),
                        }
                    }
                });
            }
            (_, q) => {
                let q = q.expect("a block format");
                ids.iter().zip(out.chunks_exact_mut(q.k())).for_each(|(&id, r)| q.dequantize_row(id as usize, r));
            }
        }
        Ok(())
    }

    /// Rows `start..start + n` for export.
    pub fn export_rows(&self, start: usize, n: usize) -> candle_core::Result<ExportData<'_>> {
        use nano_qwen3_kernels::{q4::QK4, q8::QK8};
        Ok(match self {
            Linear::Dense(w) => ExportData::Dense(w.narrow(0, start, n)?),
            Linear::Q8(q) => ExportData::Q8 { blocks: Cow::Borrowed(block_rows(&q.blocks, q.k, QK8, start, n)), n, k: q.k },
            Linear::Q4(q) => ExportData::Q4 { blocks: Cow::Borrowed(block_rows(&q.blocks, q.k, QK4, start, n)), n, k: q.k },
            // Repacked: back to row-major blocks (exact inverse), then the rows.
            Linear::Q8x8(q) => ExportData::Q8 { blocks: Cow::Owned(block_rows(&q.to_q8().blocks, q.k, QK8, start, n).to_vec()), n, k: q.k },
            Linear::Q4x8(q) => ExportData::Q4 { blocks: Cow::Owned(block_rows(&q.to_q4().blocks, q.k, QK4, start, n).to_vec()), n, k: q.k },
            // No export format of ours holds these blocks: their values, dequantized.
            Linear::Ggml(q) => {
                let mut v = vec![0f32; n * q.k];
                v.chunks_exact_mut(q.k).enumerate().for_each(|(j, row)| q.dequantize_row(start + j, row));
                ExportData::Dense(Tensor::from_vec(v, (n, q.k), &candle_core::Device::Cpu)?)
            }
        })
    }

    pub fn export(&self) -> candle_core::Result<ExportData<'_>> {
        self.export_rows(0, self.n())
    }

    /// Fix static int8 activation scales; false when this matrix is not int8.
    pub fn set_static_scales(&mut self, scales: &[f32]) -> bool {
        const SHARED: &str = "static scales are set before the model is shared";
        let slot = match self {
            Linear::Q8(q) => &mut Arc::get_mut(q).expect(SHARED).act_scales,
            Linear::Q8x8(q) => &mut Arc::get_mut(q).expect(SHARED).act_scales,
            _ => return false,
        };
        *slot = Some(scales.to_vec());
        true
    }

    /// The block formats repacked 8 rows interleaved; dense matrices stay as they are.
    pub fn repacked(self) -> Linear {
        match self {
            Linear::Q8(q) => Linear::Q8x8(Arc::new(Q8x8Matrix::from_q8(&q))),
            Linear::Q4(q) => Linear::Q4x8(Arc::new(Q4x8Matrix::from_q4(&q))),
            other => other,
        }
    }

    /// Stack row-major matrices with the same input into one (rows concatenated), when their
    /// formats allow: all dense of one dtype, all Q4, all Q8 with the same activation scales
    /// (they read the same input), or all of one GGUF block format in whole 8-row groups. Runs
    /// before repacking.
    fn stack(parts: Vec<Linear>) -> Result<Linear, Vec<Linear>> {
        let dense: Vec<&Tensor> = parts.iter().filter_map(|p| if let Linear::Dense(t) = p { Some(t) } else { None }).collect();
        let q8: Vec<&Q8Matrix> = parts.iter().filter_map(|p| if let Linear::Q8(q) = p { Some(q.as_ref()) } else { None }).collect();
        let q4: Vec<&Q4Matrix> = parts.iter().filter_map(|p| if let Linear::Q4(q) = p { Some(q.as_ref()) } else { None }).collect();
        let ggml: Vec<&GgmlMatrix> = parts.iter().filter_map(|p| if let Linear::Ggml(q) = p { Some(q.as_ref()) } else { None }).collect();
        let stacked = if dense.len() == parts.len() && dense.windows(2).all(|w| w[0].dtype() == w[1].dtype()) {
            Tensor::cat(&dense, 0).ok().map(Linear::Dense)
        } else if q8.len() == parts.len() && q8.windows(2).all(|w| w[0].act_scales == w[1].act_scales) {
            stack_blocks(&q8.iter().map(|q| (&q.blocks[..], q.n, q.k)).collect::<Vec<_>>()).map(|(blocks, n, k)| {
                let mut m = Q8Matrix::from_blocks(n, k, blocks);
                m.act_scales = q8[0].act_scales.clone();
                Linear::Q8(Arc::new(m))
            })
        } else if q4.len() == parts.len() {
            stack_blocks(&q4.iter().map(|q| (&q.blocks[..], q.n, q.k)).collect::<Vec<_>>())
                .map(|(blocks, n, k)| Linear::Q4(Arc::new(Q4Matrix { n, k, blocks })))
        } else if ggml.len() == parts.len() {
            GgmlMatrix::stack(&ggml).map(|q| Linear::Ggml(Arc::new(q)))
        } else {
            None
        };
        stacked.ok_or(parts)
    }
}

/// Projections that read the same input (q/k/v, or gate/up).
pub enum Proj {
    /// One matrix with the parts' rows stacked; `sizes` are the parts' output features.
    Fused { w: Linear, sizes: Vec<usize> },
    Separate(Vec<Linear>),
}

impl Proj {
    /// Fuse when asked and the formats allow it (e.g. not when one part kept its checkpoint dtype).
    pub fn new(parts: Vec<Linear>, fuse: bool) -> Self {
        if !fuse {
            return Proj::Separate(parts);
        }
        let sizes = parts.iter().map(Linear::n).collect();
        match Linear::stack(parts) {
            Ok(w) => Proj::Fused { w, sizes },
            Err(parts) => Proj::Separate(parts),
        }
    }

    /// Each part's output `[.., n_part]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Proj::Separate(ps) => ps.iter().map(|p| p.forward(x)).collect(),
            Proj::Fused { w, sizes } => {
                let y = w.forward(x)?;
                let last = y.rank() - 1;
                let mut at = 0;
                sizes
                    .iter()
                    .map(|&s| {
                        let part = y.narrow(last, at, s);
                        at += s;
                        part
                    })
                    .collect()
            }
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Proj::Separate(ps) => ps.iter().map(Linear::bytes).sum(),
            Proj::Fused { w, .. } => w.bytes(),
        }
    }

    /// Each part's rows for export, in order.
    pub fn export(&self) -> candle_core::Result<Vec<ExportData<'_>>> {
        match self {
            Proj::Separate(ps) => ps.iter().map(Linear::export).collect(),
            Proj::Fused { w, sizes } => {
                let mut at = 0;
                sizes
                    .iter()
                    .map(|&s| {
                        let e = w.export_rows(at, s);
                        at += s;
                        e
                    })
                    .collect()
            }
        }
    }

    /// Every matrix with a label for reports: ("q_proj", ..) or ("qkv_proj (fused)", ..).
    pub fn matrices<'a>(&'a self, names: &[&'static str], fused_name: &'static str) -> Vec<(&'static str, &'a Linear)> {
        match self {
            Proj::Separate(ps) => names.iter().copied().zip(ps).collect(),
            Proj::Fused { w, .. } => vec![(fused_name, w)],
        }
    }

    pub fn repacked(self) -> Proj {
        match self {
            Proj::Separate(ps) => Proj::Separate(ps.into_iter().map(Linear::repacked).collect()),
            Proj::Fused { w, sizes } => Proj::Fused { w: w.repacked(), sizes },
        }
    }

    pub fn set_static_scales(&mut self, scales: &[f32]) -> bool {
        match self {
            Proj::Separate(ps) => ps.iter_mut().fold(true, |all, p| p.set_static_scales(scales) && all),
            Proj::Fused { w, .. } => w.set_static_scales(scales),
        }
    }
}
