//! The work split every matmul kernel shares: output columns, in units (a column for the dense
//! and row-major block kernels, an 8-row group for the repacked ones), are cut into chunks over
//! the current kernel pool ([`crate::pool`]), a chunk per task, sized by the shape's tuned
//! [`Tiling`]; inside a task, activation rows are taken in blocks that stay in L2 while the task
//! sweeps its weights tile by tile, so each weight tile is loaded once per row block.
use crate::pool::{current_threads, parallel_for, OutPtr};
use crate::tuning::{chunk_len, tiling_for, ShapeKey, Tiling};
use std::ops::Range;

/// How one matmul `y[m, n] = x[m, k] · Wᵀ` is cut; the register tile's shape is [`drive`]'s
/// const parameters (constants in the hot loop).
pub(crate) struct Split {
    /// The kernel's name: with n, k and the pool size, the key of its tuned [`Tiling`] (compile
    /// mode max-autotune).
    pub kernel: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Column units split over the pool.
    pub units: usize,
    /// The kernel's tiling when none is tuned for this shape.
    pub default: Tiling,
}

/// One register tile: rows `i..i + mr` by units `j..j + nr`, whose first output is `y`
/// (`&mut y[i, j * COLS]`, rows `n` apart).
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub i: usize,
    pub mr: usize,
    pub j: usize,
    pub nr: usize,
    pub y: *mut f32,
}

/// Work done right after the tiles, while their outputs are in cache (the SwiGLU epilogue).
pub(crate) struct Epilogue<'a> {
    /// Each unit `j` of a chunk also computes unit `j + pair` (gate group j with its up group),
    /// so the two halves the epilogue combines come from the same task.
    pub pair: usize,
    /// `f(units, rows, y)` after each row block of a chunk: its units (without their pairs) and
    /// rows, and `y`'s base pointer.
    pub f: &'a (dyn Fn(Range<usize>, Range<usize>, OutPtr) + Sync),
}

/// Runs `tile` over every register tile of `y` (and `epilogue` after each row block of a chunk):
/// tiles of up to `MR` rows by `NR` units of `COLS` output columns; chunks are multiples of NR
/// units. A task alone writes its chunk's columns (and their pairs), in y and in the epilogue's
/// output.
pub(crate) fn drive<const MR: usize, const NR: usize, const COLS: usize>(
    s: &Split,
    y: &mut [f32],
    epilogue: Option<Epilogue>,
    tile: impl Fn(Tile) + Sync,
) {
    let (m, n, units) = (s.m, s.n, s.units);
    assert!(y.len() >= m * n, "{}: output too small for m={m} n={n}", s.kernel);
    let threads = current_threads();
    let tiling = tiling_for(ShapeKey { kernel: s.kernel, n, k: s.k, threads, decode: m == 1 }, s.default);
    // Enough chunks for load balance, each a multiple of a register tile's units.
    let chunk = chunk_len(units, threads, tiling, NR);
    let m_block = tiling.m_block.next_multiple_of(MR);
    let out = OutPtr::new(y);
    // With a pair, the tiles of unit j are followed by those of unit j + pair.
    let (fan, pair) = epilogue.as_ref().map_or((1, 0), |e| (2, e.pair));
    // `move`: the task reads its own copies of these, which stay in registers across tile calls.
    parallel_for(units.div_ceil(chunk), move |c| {
        let (j0, j1) = (c * chunk, ((c + 1) * chunk).min(units));
        for i0 in (0..m).step_by(m_block) {
            let i1 = (i0 + m_block).min(m);
            let mut j = j0;
            while j < j1 {
                let nr = (j1 - j).min(NR);
                for j in [j, j + pair].into_iter().take(fan) {
                    let mut i = i0;
                    while i < i1 {
                        let mr = (i1 - i).min(MR);
                        // SAFETY: row i < m and column j * COLS < n (units cover n), y holds
                        // m * n; this task alone writes these columns.
                        tile(Tile { i, mr, j, nr, y: unsafe { out.get().add(i * n + j * COLS) } });
                        i += mr;
                    }
                }
                j += nr;
            }
            if let Some(e) = &epilogue {
                (e.f)(j0..j1, i0..i1, out);
            }
        }
    });
}
