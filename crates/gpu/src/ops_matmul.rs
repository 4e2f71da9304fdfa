//! `y = x · Wᵀ` for every weight format: a matrix-vector kernel for decode rows (each weight row
//! read once per 4 tokens, subgroup reductions) and a tiled kernel for prefill chunks. A split
//! weight runs once per part, each part writing its own range of output columns.
use crate::error::{GpuError, Result};
use crate::kernels::K;
use crate::ops_basic::{check_view, u};
use crate::step::{grid2, Bind, Step};
use crate::tensor::{GpuTensor, View};

/// Rows up to which [`Step::matmul`] takes the matrix-vector kernel.
pub const MATVEC_MAX_ROWS: usize = 8;

/// Which matmul kernel (forced in tests; [`Step::matmul`] picks by row count). The two sum in
/// different orders, so their results differ in the last bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKind {
    MatVec,
    Tiled,
}

/// Weight rows per matvec workgroup: many for the lm_head (fewer, fuller workgroups), few for the
/// layers' matrices (enough workgroups to fill a GPU), and never under ~4K weights per workgroup:
/// a workgroup has a fixed cost (large on lavapipe, which runs each one as a CPU task), so short
/// rows (the test fixtures' k = 32) take more of them (measured on lavapipe with `op_cost 151936 32 1`:
/// qwen3-tiny's lm_head at 16 rows per workgroup 110-149 ms, at 128 rows 85 ms).
fn rows_per_workgroup(n: usize, k: usize) -> u32 {
    let base = if n >= 32_768 { 16 } else { 4 };
    base.max(4096 / k.max(1)).min(1024) as u32
}

impl Step<'_> {
    /// `y[i, n] = x[i, :] · w[n, :]` for `rows` rows of x (`w`: `[n, k]`, any weight format,
    /// split or not; `k % 4 == 0`, and `k % 32 == 0` for the block formats).
    pub fn matmul(&mut self, x: View, w: &GpuTensor, y: View, rows: usize) -> Result<()> {
        let kind = if rows <= MATVEC_MAX_ROWS { MatmulKind::MatVec } else { MatmulKind::Tiled };
        self.matmul_with(kind, x, w, y, rows)
    }

    pub fn matmul_with(&mut self, kind: MatmulKind, x: View, w: &GpuTensor, y: View, rows: usize) -> Result<()> {
        let (n, k) = (w.rows, w.cols);
        if !w.dtype.is_weight() || k % 4 != 0 {
            return Err(GpuError::Shape(format!("matmul: weights {:?} [{n}, {k}] (a weight format, k a multiple of 4)", w.dtype)));
        }
        check_view("matmul x", &x, rows, k)?;
        check_view("matmul y", &y, rows, n)?;
        for part in &w.parts {
            let rpw = rows_per_workgroup(part.rows, k);
            let p = [u(rows), u(part.rows), u(k), u(x.offset), u(x.stride), u(y.offset), u(y.stride), u(part.first_row), rpw];
            let binds = vec![(1, Bind::part(part)), (2, Bind::part(x.t.single())), (3, Bind::part(y.t.single()))];
            match kind {
                MatmulKind::MatVec => {
                    let (gx, gy) = grid2(u(part.rows.div_ceil(rpw as usize)));
                    self.dispatch(K::Matvec(w.dtype), binds, &p, [gx, gy, u(rows.div_ceil(4))])?;
                }
                MatmulKind::Tiled => {
                    self.dispatch(K::Tiled(w.dtype), binds, &p, [u(part.rows.div_ceil(32)), u(rows.div_ceil(32)), 1])?;
                }
            }
        }
        Ok(())
    }
}

impl Step<'_> {
    /// `out[i, j] = silu(x[i] · w[j]) * (x[i] · w[inter + j])` for `w` = gate rows stacked over
    /// up rows (`[2 inter, k]`). Decode rows (up to [`MATVEC_MAX_ROWS`], unsplit `w`) run one
    /// fused kernel and never write the gate/up rows; otherwise the matmul goes to the step's
    /// scratch and [`Step::swiglu`]'s kernel follows. Same arithmetic either way up to the
    /// matmul kernels' summation order.
    pub fn matmul_swiglu(&mut self, x: View, w: &GpuTensor, out: View, rows: usize) -> Result<()> {
        let (n, k) = (w.rows, w.cols);
        if n % 2 != 0 || !w.dtype.is_weight() || k % 4 != 0 {
            return Err(GpuError::Shape(format!("matmul_swiglu: weights {:?} [{n}, {k}] (gate and up stacked: an even row count, k a multiple of 4)", w.dtype)));
        }
        let inter = n / 2;
        check_view("matmul_swiglu x", &x, rows, k)?;
        check_view("matmul_swiglu out", &out, rows, inter)?;
        if rows <= MATVEC_MAX_ROWS && w.parts.len() == 1 {
            let rpw = rows_per_workgroup(inter, k);
            let p = [u(rows), u(inter), u(k), u(x.offset), u(x.stride), u(out.offset), u(out.stride), rpw];
            let binds = vec![(1, Bind::part(w.single())), (2, Bind::part(x.t.single())), (3, Bind::part(out.t.single()))];
            let (gx, gy) = grid2(u(inter.div_ceil(rpw as usize)));
            return self.dispatch(K::MatvecSwiglu(w.dtype), binds, &p, [gx, gy, u(rows.div_ceil(4))]);
        }
        // Unfused: gate/up rows into the scratch arena (rows x 2 inter), then SwiGLU.
        self.scratch_floats = self.scratch_floats.max(rows * n);
        let kind = if rows <= MATVEC_MAX_ROWS { MatmulKind::MatVec } else { MatmulKind::Tiled };
        for part in &w.parts {
            let rpw = rows_per_workgroup(part.rows, k);
            let binds = vec![(1, Bind::part(part)), (2, Bind::part(x.t.single())), (3, Bind::Scratch)];
            match kind {
                MatmulKind::MatVec => {
                    let p = [u(rows), u(part.rows), u(k), u(x.offset), u(x.stride), 0, u(n), u(part.first_row), rpw];
                    let (gx, gy) = grid2(u(part.rows.div_ceil(rpw as usize)));
                    self.dispatch(K::Matvec(w.dtype), binds, &p, [gx, gy, u(rows.div_ceil(4))])?;
                }
                MatmulKind::Tiled => {
                    let p = [u(rows), u(part.rows), u(k), u(x.offset), u(x.stride), 0, u(n), u(part.first_row)];
                    self.dispatch(K::Tiled(w.dtype), binds, &p, [u(part.rows.div_ceil(32)), u(rows.div_ceil(32)), 1])?;
                }
            }
        }
        let p = [u(rows), u(inter), 0, u(n), u(inter), u(n), u(out.offset), u(out.stride)];
        let binds = vec![(1, Bind::Scratch), (2, Bind::Scratch), (3, Bind::part(out.t.single()))];
        self.dispatch(K::Swiglu, binds, &p, crate::ops_basic::grid_rows(inter, rows))
    }
}
