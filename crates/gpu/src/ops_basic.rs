//! Step ops over activation rows: embedding gather, RMSNorm (+ residual), residual / bias add,
//! SwiGLU, argmax. Activations are f32; each op checks its views before recording.
use crate::error::{GpuError, Result};
use crate::kernels::K;
use crate::step::{grid2, Bind, Step};
use crate::tensor::{DType, GpuTensor, View};

/// `rows` rows of `cols` starting at the view, inside an unsplit f32 tensor.
pub(crate) fn check_view(op: &str, v: &View, rows: usize, cols: usize) -> Result<()> {
    if v.t.dtype != DType::F32 || v.t.parts.len() != 1 {
        return Err(GpuError::Shape(format!("{op}: activations must be one unsplit f32 tensor, got {:?} in {} part(s)", v.t.dtype, v.t.parts.len())));
    }
    if rows > 0 && v.offset + (rows - 1) * v.stride + cols > v.t.len() {
        return Err(GpuError::Shape(format!(
            "{op}: {rows} rows of {cols} at offset {} stride {} run past the tensor's {} elements",
            v.offset, v.stride, v.t.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_vec(op: &str, t: &GpuTensor, len: usize) -> Result<()> {
    if t.dtype != DType::F32 || t.parts.len() != 1 || t.len() < len {
        return Err(GpuError::Shape(format!("{op}: expected an f32 vector of {len}, got {:?} [{}, {}]", t.dtype, t.rows, t.cols)));
    }
    Ok(())
}

pub(crate) fn u(x: usize) -> u32 {
    x as u32
}

/// Dispatch for `cols` x `rows` items in workgroups of 64 along the columns.
pub(crate) fn grid_rows(cols: usize, rows: usize) -> [u32; 3] {
    let y = rows.min(65535);
    [u(cols.div_ceil(64)), u(y), u(rows.div_ceil(65535).max(1))]
}

impl Step<'_> {
    /// `out[i] = table[ids[i]]` widened to f32 (any weight format; split tables handled).
    pub fn embedding(&mut self, table: &GpuTensor, ids: &[u32], out: View) -> Result<()> {
        let k = table.cols;
        check_view("embedding", &out, ids.len(), k)?;
        if !table.dtype.is_weight() || !k.is_multiple_of(4) {
            return Err(GpuError::Shape(format!("embedding: table {:?} with {k} columns (a weight format, columns a multiple of 4)", table.dtype)));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.rows) {
            return Err(GpuError::Shape(format!("embedding: token id {bad} out of range (vocabulary {})", table.rows)));
        }
        let at = self.push_data(ids);
        for part in &table.parts {
            let p = [u(ids.len()), u(part.rows), u(k), at, u(out.offset), u(out.stride), u(part.first_row)];
            let binds = vec![(1, Bind::part(part)), (2, Bind::Data), (3, Bind::part(out.t.single()))];
            self.dispatch(K::Embed(table.dtype), binds, &p, grid_rows(k / 4, ids.len()))?;
        }
        Ok(())
    }

    /// `out[i] = x[i] / rms(x[i]) * w` for `rows` rows; `1 / sqrt(mean(x²) + eps)` as the CPU.
    pub fn rms_norm(&mut self, x: View, w: &GpuTensor, eps: f32, out: View, rows: usize) -> Result<()> {
        self.norm_rows(x, None, w, eps, out, rows)
    }

    /// [`Step::rms_norm`] of the listed rows of `x` only, packed into `out` (the final norm of
    /// the rows whose logits are wanted).
    pub fn rms_norm_rows(&mut self, x: View, rows: &[u32], w: &GpuTensor, eps: f32, out: View) -> Result<()> {
        let max = rows.iter().copied().max().map_or(0, |m| m as usize + 1);
        check_view("rms_norm_rows", &x, max, w.len())?;
        self.norm_rows(x, Some(rows), w, eps, out, rows.len())
    }

    fn norm_rows(&mut self, x: View, idx: Option<&[u32]>, w: &GpuTensor, eps: f32, out: View, rows: usize) -> Result<()> {
        let h = w.len();
        check_vec("rms_norm", w, h)?;
        if idx.is_none() {
            check_view("rms_norm", &x, rows, h)?;
        }
        check_view("rms_norm", &out, rows, h)?;
        let idx_off = idx.map_or(0, |r| self.push_data(r));
        let p = [u(rows), u(h), u(x.offset), u(x.stride), u(out.offset), u(out.stride), eps.to_bits(), idx_off, idx.is_some() as u32];
        let binds = vec![(1, Bind::part(x.t.single())), (2, Bind::part(w.single())), (3, Bind::Data), (4, Bind::part(out.t.single()))];
        let (gx, gy) = grid2(u(rows));
        self.dispatch(K::RmsNorm, binds, &p, [gx, gy, 1])?;
        Ok(())
    }

    /// The residual add and the next norm in one pass: `x += r; out = x / rms(x) * w`.
    pub fn add_rms_norm(&mut self, x: View, r: View, w: &GpuTensor, eps: f32, out: View, rows: usize) -> Result<()> {
        let h = w.len();
        check_vec("add_rms_norm", w, h)?;
        check_view("add_rms_norm", &x, rows, h)?;
        check_view("add_rms_norm", &r, rows, h)?;
        check_view("add_rms_norm", &out, rows, h)?;
        let p = [u(rows), u(h), u(x.offset), u(x.stride), u(out.offset), u(out.stride), eps.to_bits(), u(r.offset), u(r.stride)];
        let binds = vec![(1, Bind::part(x.t.single())), (2, Bind::part(r.t.single())), (3, Bind::part(w.single())), (4, Bind::part(out.t.single()))];
        let (gx, gy) = grid2(u(rows));
        self.dispatch(K::AddRmsNorm, binds, &p, [gx, gy, 1])?;
        Ok(())
    }

    /// `x[i, :cols] += r[i, :cols]`.
    pub fn add(&mut self, x: View, r: View, rows: usize, cols: usize) -> Result<()> {
        check_view("add", &x, rows, cols)?;
        check_view("add", &r, rows, cols)?;
        self.add_raw(x, r.t, r.offset, r.stride, rows, cols)
    }

    /// `x[i, :] += bias` for `rows` rows (Qwen2's q/k/v bias: pass the q, k or v columns of a
    /// fused qkv tensor as the view and that part of the bias).
    pub fn add_bias(&mut self, x: View, bias: &GpuTensor, rows: usize) -> Result<()> {
        check_vec("add_bias", bias, bias.len())?;
        check_view("add_bias", &x, rows, bias.len())?;
        self.add_raw(x, bias, 0, 0, rows, bias.len())
    }

    fn add_raw(&mut self, x: View, r: &GpuTensor, r_off: usize, r_stride: usize, rows: usize, cols: usize) -> Result<()> {
        let p = [u(rows), u(cols), u(x.offset), u(x.stride), u(r_off), u(r_stride)];
        let binds = vec![(1, Bind::part(x.t.single())), (2, Bind::part(r.single()))];
        self.dispatch(K::Add, binds, &p, grid_rows(cols, rows))
    }

    /// `out[i, j] = silu(gate[i, j]) * up[i, j]` for `rows` x `cols` (gate and up may be column
    /// ranges of one fused gate/up tensor).
    pub fn swiglu(&mut self, gate: View, up: View, out: View, rows: usize, cols: usize) -> Result<()> {
        check_view("swiglu", &gate, rows, cols)?;
        check_view("swiglu", &up, rows, cols)?;
        check_view("swiglu", &out, rows, cols)?;
        let p = [u(rows), u(cols), u(gate.offset), u(gate.stride), u(up.offset), u(up.stride), u(out.offset), u(out.stride)];
        let binds = vec![(1, Bind::part(gate.t.single())), (2, Bind::part(up.t.single())), (3, Bind::part(out.t.single()))];
        self.dispatch(K::Swiglu, binds, &p, grid_rows(cols, rows))?;
        Ok(())
    }

    /// `out[out_first + i]` = index of the largest of row i's `n` values (lowest index among
    /// equals), for `rows` rows: greedy steps read back only these.
    pub fn argmax(&mut self, x: View, rows: usize, n: usize, out: &GpuTensor, out_first: usize) -> Result<()> {
        check_view("argmax", &x, rows, n)?;
        if out.dtype != DType::U32 || out.parts.len() != 1 || out_first + rows > out.len() {
            return Err(GpuError::Shape(format!("argmax: output must be a u32 tensor of at least {} elements", out_first + rows)));
        }
        let p = [u(rows), u(n), u(x.offset), u(x.stride), u(out_first)];
        let binds = vec![(1, Bind::part(x.t.single())), (2, Bind::part(out.single()))];
        let (gx, gy) = grid2(u(rows));
        self.dispatch(K::Argmax, binds, &p, [gx, gy, 1])?;
        Ok(())
    }
}
