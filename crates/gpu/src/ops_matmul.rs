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
            // Rows per matvec workgroup: many for the lm_head (fewer, fuller workgroups), few for
            // the layers' matrices (enough workgroups to fill a GPU).
            let rpw = if part.rows >= 32_768 { 16 } else { 4 };
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
