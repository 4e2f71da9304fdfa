//! GGUF's block formats run as stored: Q4_K, Q5_K, Q6_K (super-blocks of 256) and Q5_0, Q4_1,
//! Q5_1 (blocks of 32), repacked at load into 8-row units ([`layout`]) and multiplied with int8
//! activations ([`act`]: one f32 scale per block of 256, or of 32, with the value sums the
//! formats' offsets and mins need). Every product is an exact integer sum per sub-block, scaled
//! by the sub-block's integer scale in i32, then the block is finished in f32:
//! - Q4_K / Q5_K: `Σ_j sc_j Σ q·x · (d·dx) − Σ_j mn_j Σ_j x · (dmin·dx)`
//! - Q6_K: `Σ_j sc_j (Σ q·x − 32 Σ_j x) · (d·dx)`
//! - Q5_0: `(Σ q·x − 16 Σ x) · (d·dx)`; Q4_1 / Q5_1: `Σ q·x · (d·dx) + Σ x · (m·dx)`
//!
//! Paths: portable (the reference below), AVX2 and AVX-512 VNNI (one generic tile per format,
//! `avx2.rs`), NEON dotprod (`neon.rs`); the split over threads is the repacked kernels' one
//! ([`crate::repack::drive`], SwiGLU epilogue included).
pub mod act;
pub mod layout;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(test)]
mod tests;

use crate::quant::{swiglu_unfused, QuantMatrix};
use crate::simd::Isa;
use act::{with_quantized, ActBlock, X32, XK};
pub use layout::{Format, ROWS};
use layout::{pack_gguf, unpack, Row};
#[cfg(test)]
use layout::{decode, pack};
use rayon::prelude::*;

/// `$f::<MR, ..>(args)` for a tile of `mr` (1..=4) activation rows.
macro_rules! by_rows {
    ($($f:ident)::+ $(, $c:expr)?; $mr:expr, $($arg:expr),*) => {
        match $mr {
            1 => $($f)::+::<1 $(, {$c})?>($($arg),*),
            2 => $($f)::+::<2 $(, {$c})?>($($arg),*),
            3 => $($f)::+::<3 $(, {$c})?>($($arg),*),
            _ => $($f)::+::<4 $(, {$c})?>($($arg),*),
        }
    };
}

/// GGUF blocks of `format` to f32 with GGUF's reference dequantizers (`kquants`,
/// `legacy_quants`); `out.len()` values.
pub fn dequantize_gguf(format: Format, bytes: &[u8], out: &mut [f32]) {
    use crate::{kquants as kq, legacy_quants as lq};
    let f = match format {
        Format::Q4K => kq::dequantize_q4_k,
        Format::Q5K => kq::dequantize_q5_k,
        Format::Q6K => kq::dequantize_q6_k,
        Format::Q5_0 => lq::dequantize_q5_0,
        Format::Q4_1 => lq::dequantize_q4_1,
        Format::Q5_1 => lq::dequantize_q5_1,
    };
    f(bytes, out)
}

/// A `[n, k]` matrix of GGUF blocks in 8-row units, `[group][block]`.
pub struct GgmlMatrix {
    pub format: Format,
    pub n: usize,
    pub k: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for GgmlMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "GgmlMatrix({} [{}, {}])", self.format.name(), self.n, self.k)
    }
}

impl GgmlMatrix {
    /// From a GGUF tensor's bytes (`n` rows of `k` values, row-major blocks); every size is
    /// checked before anything is read.
    pub fn from_gguf(format: Format, n: usize, k: usize, bytes: &[u8]) -> Result<Self, String> {
        let (bv, bb) = (format.block_values(), format.gguf_bytes());
        if k == 0 || !k.is_multiple_of(bv) {
            return Err(format!("{}: row length {k} is not a whole number of {bv}-value blocks", format.name()));
        }
        let bpr = k / bv;
        let want = n.checked_mul(bpr).and_then(|b| b.checked_mul(bb));
        if want != Some(bytes.len()) {
            return Err(format!("{}: {} bytes for [{n}, {k}], expected {want:?}", format.name(), bytes.len()));
        }
        let unit = format.unit_bytes();
        let mut data = vec![0u8; n.div_ceil(ROWS) * bpr * unit];
        // One 8-row group per task (the 150k-row embedding is most of the load).
        data.par_chunks_mut(bpr * unit).enumerate().for_each(|(g, out)| {
            for (b, out) in out.chunks_exact_mut(unit).enumerate() {
                let mut rows = [None; ROWS];
                for (r, row) in rows.iter_mut().enumerate().take(n - g * ROWS) {
                    let at = ((g * ROWS + r) * bpr + b) * bb;
                    *row = Some(&bytes[at..at + bb]);
                }
                pack_gguf(format, &rows, out);
            }
        });
        Ok(Self { format, n, k, data })
    }

    /// Matrices with the same format and row length, rows concatenated (fused q/k/v, gate/up);
    /// None unless every part's rows fill whole 8-row groups.
    pub fn stack(parts: &[&GgmlMatrix]) -> Option<GgmlMatrix> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.format != first.format || p.k != first.k || p.n % ROWS != 0) {
            return None;
        }
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        Some(GgmlMatrix { format: first.format, n: parts.iter().map(|p| p.n).sum(), k: first.k, data })
    }

    fn blocks_per_row(&self) -> usize {
        self.k / self.format.block_values()
    }

    /// Row `j`, block `b`, decoded.
    fn row(&self, j: usize, b: usize) -> Row {
        let (unit, bpr) = (self.format.unit_bytes(), self.blocks_per_row());
        let at = ((j / ROWS) * bpr + b) * unit;
        unpack(self.format, &self.data[at..at + unit], j % ROWS)
    }

    /// `linear`, with the SwiGLU epilogue when `act` is given.
    fn run(&self, x: &[f32], m: usize, y: &mut [f32], act: Option<&mut [f32]>, isa: Isa) {
        assert!(x.len() >= m * self.k && y.len() >= m * self.n, "{}: buffers too small", self.name());
        let x = &x[..m * self.k];
        if self.format.k_quant() {
            with_quantized::<XK, _>(x, self.k, |xq| self.drive(xq, m, y, act, isa))
        } else {
            with_quantized::<X32, _>(x, self.k, |xq| self.drive(xq, m, y, act, isa))
        }
    }

    fn drive<A: ActBlock>(&self, xq: &[A], m: usize, y: &mut [f32], act: Option<&mut [f32]>, isa: Isa) {
        let (n, bpr, unit, f) = (self.n, self.blocks_per_row(), self.format.unit_bytes(), self.format);
        let two = two_group_tiles(f, isa);
        crate::repack::drive(self.name(), m, n, self.k, y, act, false, two, |t| unsafe {
            let (x, mr) = (xq.as_ptr().add(t.i * bpr) as *const u8, t.mr);
            let w = |j: usize| self.data.as_ptr().add(j * bpr * unit);
            let cols = |j: usize, groups: usize| (n - j * ROWS).min(groups * ROWS);
            if two && t.nr == 2 {
                #[cfg(target_arch = "x86_64")]
                return match f {
                    Format::Q4K => by_rows!(avx512::q4k_x2; mr, x as *const XK, w(t.j), bpr, t.y, n, cols(t.j, 2)),
                    _ => by_rows!(avx512::q6k_x2; mr, x as *const XK, w(t.j), bpr, t.y, n, cols(t.j, 2)),
                };
            }
            for j in t.j..t.j + t.nr {
                let out = t.y.add((j - t.j) * ROWS);
                if simd_tile(f, isa, mr, x, w(j), bpr, out, n, cols(j, 1)) {
                    continue;
                }
                for a in 0..mr {
                    let acc = portable(f, (x as *const A).add(a * bpr) as *const u8, w(j), bpr, cols(j, 1));
                    std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(a * n), cols(j, 1));
                }
            }
        })
    }
}

/// Whether this format has 512-bit tiles of two 8-row groups on this ISA (AVX-512 VNNI: Q4_K,
/// Q6_K, the Q4_K_M files' formats).
fn two_group_tiles(f: Format, isa: Isa) -> bool {
    cfg!(target_arch = "x86_64") && isa.uses_vnni() && matches!(f, Format::Q4K | Format::Q6K)
}

/// The SIMD tile for this format and ISA, if there is one; false: run the portable code.
/// # Safety
/// `x` points to `mr` rows of `blocks` activation blocks of the format's kind, `w` to one
/// 8-row group's `blocks` units, `y` to `mr` rows of `ldy` outputs with `cols` writable.
#[allow(clippy::too_many_arguments)]
unsafe fn simd_tile(f: Format, isa: Isa, mr: usize, x: *const u8, w: *const u8, blocks: usize, y: *mut f32, ldy: usize, cols: usize) -> bool {
    let (xk, x32) = (x as *const XK, x as *const X32);
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! x86 {
            ($m:ident) => {
                match f {
                    Format::Q4K => by_rows!($m::q4k; mr, xk, w, blocks, y, ldy, cols),
                    Format::Q5K => by_rows!($m::q5k; mr, xk, w, blocks, y, ldy, cols),
                    Format::Q6K => by_rows!($m::q6k; mr, xk, w, blocks, y, ldy, cols),
                    Format::Q5_0 => by_rows!($m::legacy, avx2::Q5_0; mr, x32, w, blocks, y, ldy, cols),
                    Format::Q4_1 => by_rows!($m::legacy, avx2::Q4_1; mr, x32, w, blocks, y, ldy, cols),
                    Format::Q5_1 => by_rows!($m::legacy, avx2::Q5_1; mr, x32, w, blocks, y, ldy, cols),
                }
            };
        }
        if isa.uses_vnni() {
            x86!(avx512);
            return true;
        }
        if isa.uses_avx2() {
            x86!(avx2);
            return true;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::NeonDotprod {
        match f {
            Format::Q4K => by_rows!(neon::q4k, false; mr, xk, w, blocks, y, ldy, cols),
            Format::Q5K => by_rows!(neon::q4k, true; mr, xk, w, blocks, y, ldy, cols),
            Format::Q6K => by_rows!(neon::q6k; mr, xk, w, blocks, y, ldy, cols),
            Format::Q5_0 => by_rows!(neon::legacy, neon::Q5_0; mr, x32, w, blocks, y, ldy, cols),
            Format::Q4_1 => by_rows!(neon::legacy, neon::Q4_1; mr, x32, w, blocks, y, ldy, cols),
            Format::Q5_1 => by_rows!(neon::legacy, neon::Q5_1; mr, x32, w, blocks, y, ldy, cols),
        }
        return true;
    }
    let _ = (f, isa, mr, xk, x32, w, blocks, y, ldy, cols);
    false
}

/// Plain Rust reference for one activation row by one 8-row group (`cols` real rows): each
/// row's units decoded, integer sums per sub-block, the block finished in f32 as the module
/// docs say.
unsafe fn portable(f: Format, x: *const u8, w: *const u8, blocks: usize, cols: usize) -> [f32; ROWS] {
    let unit = f.unit_bytes();
    let mut acc = [0f32; ROWS];
    for b in 0..blocks {
        let u = std::slice::from_raw_parts(w.add(b * unit), unit);
        for (r, a) in acc.iter_mut().enumerate().take(cols) {
            let row = unpack(f, u, r);
            let (d, dm) = (half::f16::from_bits(row.d).to_f32(), half::f16::from_bits(row.dmin).to_f32());
            let dot = |qs: &[i8], from: usize, len: usize| -> i32 { (from..from + len).map(|i| row.q[i] as i32 * qs[i] as i32).sum() };
            if f.k_quant() {
                let xb = &*(x as *const XK).add(b);
                let (isum, imin): (i32, i32) = match f {
                    Format::Q6K => ((0..16).map(|j| row.sc[j] * (dot(&xb.qs, 16 * j, 16) - 32 * xb.s16[j])).sum(), 0),
                    _ => ((0..8).map(|j| row.sc[j] * dot(&xb.qs, 32 * j, 32)).sum(), (0..8).map(|j| row.mn[j] * xb.s32[j]).sum()),
                };
                *a += isum as f32 * (d * xb.d);
                *a -= imin as f32 * (dm * xb.d);
            } else {
                let xb = &*(x as *const X32).add(b);
                let s = dot(&xb.qs, 0, 32);
                match f {
                    Format::Q5_0 => *a += (s - 16 * xb.sum) as f32 * (d * xb.d),
                    _ => *a += s as f32 * (d * xb.d) + xb.sum as f32 * (dm * xb.d),
                }
            }
        }
    }
    acc
}

impl QuantMatrix for GgmlMatrix {
    fn name(&self) -> &'static str {
        match self.format {
            Format::Q4K => "nano-qwen3-q4k-linear",
            Format::Q5K => "nano-qwen3-q5k-linear",
            Format::Q6K => "nano-qwen3-q6k-linear",
            Format::Q5_0 => "nano-qwen3-q5_0-linear",
            Format::Q4_1 => "nano-qwen3-q4_1-linear",
            Format::Q5_1 => "nano-qwen3-q5_1-linear",
        }
    }

    fn n(&self) -> usize {
        self.n
    }

    fn k(&self) -> usize {
        self.k
    }

    fn bytes(&self) -> usize {
        self.data.len()
    }

    fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        let bv = self.format.block_values();
        for (b, chunk) in out[..self.k].chunks_exact_mut(bv).enumerate() {
            let row = self.row(j, b);
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = row.value(self.format, i);
            }
        }
    }

    fn linear(&self, x: &[f32], m: usize, y: &mut [f32], isa: Isa) {
        self.run(x, m, y, None, isa)
    }

    fn linear_swiglu(&self, x: &[f32], m: usize, gu: &mut [f32], act: &mut [f32], isa: Isa) {
        if !self.n.is_multiple_of(2 * ROWS) {
            return swiglu_unfused(self, x, m, gu, act, isa);
        }
        self.run(x, m, gu, Some(act), isa)
    }
}
