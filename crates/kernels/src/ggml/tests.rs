//! Every GGUF-block format on every path against GGUF's own dequantizers
//! ([`dequantize_gguf`]: `kquants`, `legacy_quants`) times f32 activations, summed in f64, on fresh random blocks.
use super::*;
use crate::quant::test_data;
use half::f16;


/// `blocks` random valid GGUF blocks: random bytes (every code, 6-bit scale / min and high bit
/// pattern is valid), then finite f16 scales in the ranges trained files have.
fn random_blocks(f: Format, blocks: usize, seed: u64) -> Vec<u8> {
    let bb = f.gguf_bytes();
    let noise = test_data(blocks * bb, seed);
    let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 128.0) as u8).collect();
    let scale = test_data(2 * blocks, seed ^ 0x5eed);
    for (b, block) in bytes.chunks_exact_mut(bb).enumerate() {
        let (s0, s1) = (scale[2 * b], scale[2 * b + 1]);
        let mut put = |at: usize, v: f32| block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
        match f {
            Format::Q4K | Format::Q5K => {
                put(0, 0.002 + 0.002 * s0.abs());
                put(2, 0.001 + 0.004 * s1.abs());
            }
            Format::Q6K => put(208, 0.001 + 0.002 * s0.abs()),
            Format::Q5_0 => put(0, 0.01 + 0.02 * s0.abs()),
            Format::Q4_1 | Format::Q5_1 => {
                put(0, 0.01 + 0.02 * s0.abs());
                put(2, 0.2 * s1);
            }
        }
    }
    bytes
}

fn isas() -> Vec<Isa> {
    std::iter::once(Isa::Portable).chain(Isa::simd_paths()).collect()
}

/// Decoding and the 8-row layout are exact: every row of every unit reads back as decoded, and
/// the values are GGUF's dequantizer's, bit for bit.
#[test]
fn layout_round_trips_and_values_match_gguf() {
    for f in Format::ALL {
        let (n, bpr) = (13, 3);
        let k = bpr * f.block_values();
        let bytes = random_blocks(f, n * bpr, 11);
        let q = GgmlMatrix::from_gguf(f, n, k, &bytes).unwrap();
        let mut want = vec![0f32; n * k];
        dequantize_gguf(f, &bytes, &mut want);
        let mut row = vec![0f32; k];
        for j in 0..n {
            for b in 0..bpr {
                let at = (j * bpr + b) * f.gguf_bytes();
                assert_eq!(q.row(j, b), decode(f, &bytes[at..at + f.gguf_bytes()]), "{} row {j} block {b}", f.name());
            }
            q.dequantize_row(j, &mut row);
            let same = row.iter().zip(&want[j * k..]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{} row {j}: dequantized values differ from GGUF's", f.name());
        }
        assert_eq!(q.bytes(), n.div_ceil(ROWS) * bpr * f.unit_bytes());
    }
}

/// The load's direct packing writes the units that decoding and packing each row write.
#[test]
fn direct_packing_equals_decode_then_pack() {
    for f in Format::ALL {
        let bytes = random_blocks(f, 7, 5);
        let blocks: Vec<&[u8]> = bytes.chunks_exact(f.gguf_bytes()).collect();
        let given: [Option<&[u8]>; ROWS] = std::array::from_fn(|r| blocks.get(r).copied());
        let (mut direct, mut generic) = (vec![1u8; f.unit_bytes()], vec![2u8; f.unit_bytes()]);
        pack_gguf(f, &given, &mut direct);
        pack(f, &given.map(|b| b.map_or(Row::ZERO, |b| decode(f, b))), &mut generic);
        assert_eq!(direct, generic, "{}", f.name());
    }
}

/// `y = x · Wᵀ` on every path within the error of rounding activations to int8: per block of
/// `L` activations (256 or 32) with scale `d = max|x| / 127`, each `|x − d·q| <= d / 2`, so
/// `|y − y_ref| <= Σ_blocks d/2 · Σ|w|` over the row, plus f32 rounding (1e-5 of `Σ|w·x|`).
#[test]
fn every_path_matches_the_f64_reference_within_the_activation_rounding() {
    for f in Format::ALL {
        let bv = f.block_values();
        // 37 and 12 rows: a last 8-row group of 5 and 4 rows, alone and inside a two-group tile.
        for (n, bpr) in [(37usize, 3usize), (3, 1), (16, 2), (12, 2)] {
            let k = bpr * bv;
            let bytes = random_blocks(f, n * bpr, (n * 31 + bpr) as u64);
            let q = GgmlMatrix::from_gguf(f, n, k, &bytes).unwrap();
            let mut w = vec![0f32; n * k];
            dequantize_gguf(f, &bytes, &mut w);
            for m in [1usize, 2, 3, 7, 33] {
                let x: Vec<f32> = test_data(m * k, (m * 7 + n) as u64).iter().enumerate().map(|(i, v)| v * (1.0 + (i % 5) as f32)).collect();
                let mut portable = vec![0f32; m * n];
                for isa in isas() {
                    let mut y = vec![f32::NAN; m * n + 1];
                    y[m * n] = 7.0;
                    q.linear(&x, m, &mut y, isa);
                    assert_eq!(y[m * n], 7.0, "padding rows must not be written");
                    for i in 0..m {
                        let xr = &x[i * k..(i + 1) * k];
                        // The activations as the kernels see them (d·q per block): against these
                        // only f32 rounding separates the result from the exact sum.
                        let seen: Vec<f64> = if f.k_quant() {
                            xr.chunks(bv).flat_map(|c| { let b = act::quantize_k(c); b.qs.map(|q| q as f64 * b.d as f64) }).collect()
                        } else {
                            xr.chunks(bv).flat_map(|c| { let b = act::quantize_32(c); b.qs.map(|q| q as f64 * b.d as f64) }).collect()
                        };
                        let steps: Vec<f64> = xr.chunks(bv).map(|c| c.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0).collect();
                        for j in 0..n {
                            let wr = &w[j * k..(j + 1) * k];
                            let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let size: f64 = wr.iter().zip(xr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                            let rounding: f64 = wr.chunks(bv).zip(&steps).map(|(c, d)| d / 2.0 * c.iter().map(|v| v.abs() as f64).sum::<f64>()).sum();
                            let got = y[i * n + j] as f64;
                            let bound = rounding + 1e-5 * size + 1e-6;
                            let exact_seen: f64 = wr.iter().zip(&seen).map(|(a, b)| *a as f64 * b).sum();
                            let tight = 2e-6 * size + 1e-6;
                            assert!((got - exact_seen).abs() <= tight, "{} {} m={m} n={n} k={k} [{i},{j}]: {got} vs {exact_seen} on the int8 activations (bound {tight})", f.name(), isa.name());
                            assert!((got - exact).abs() <= bound, "{} {} m={m} n={n} k={k} [{i},{j}]: {got} vs {exact} (bound {bound})", f.name(), isa.name());
                        }
                    }
                    if isa == Isa::Portable {
                        portable = y[..m * n].to_vec();
                    } else {
                        for (a, b) in y.iter().zip(&portable) {
                            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{} {}: simd {a} vs portable {b}", f.name(), isa.name());
                        }
                    }
                }
            }
        }
    }
}

/// The SwiGLU epilogue gives `silu(gate) · up` of the plain matmul's outputs, on every path.
#[test]
fn swiglu_epilogue_matches_the_matmul() {
    for f in [Format::Q4K, Format::Q6K, Format::Q5_0] {
        let (n, k, m) = (32, 2 * f.block_values(), 5);
        let q = GgmlMatrix::from_gguf(f, n, k, &random_blocks(f, n * k / f.block_values(), 3)).unwrap();
        let x = test_data(m * k, 8);
        for isa in isas() {
            let (mut y, mut gu, mut act, mut want) = (vec![0f32; m * n], vec![0f32; m * n], vec![0f32; m * n / 2], vec![0f32; m * n / 2]);
            q.linear(&x, m, &mut y, isa);
            crate::fused::silu_mul(&y, n / 2, &mut want);
            q.linear_swiglu(&x, m, &mut gu, &mut act, isa);
            assert_eq!(gu, y, "{} {}", f.name(), isa.name());
            for (a, b) in act.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{} {}: {a} vs {b}", f.name(), isa.name());
            }
        }
    }
}

/// Sizes from a file are checked before they size anything; stacking needs whole 8-row groups.
#[test]
fn sizes_are_checked_and_stacking_keeps_rows() {
    let f = Format::Q4K;
    let bytes = random_blocks(f, 8, 1);
    assert!(GgmlMatrix::from_gguf(f, 4, 768, &bytes).unwrap_err().contains("1152 bytes for [4, 768]"));
    assert!(GgmlMatrix::from_gguf(f, 8, 300, &bytes).unwrap_err().contains("row length 300"));
    assert!(GgmlMatrix::from_gguf(f, usize::MAX / 2, 256, &bytes).is_err(), "overflowing sizes are refused");
    let a = GgmlMatrix::from_gguf(f, 8, 256, &bytes).unwrap();
    let c = GgmlMatrix::from_gguf(f, 8, 256, &random_blocks(f, 8, 2)).unwrap();
    let s = GgmlMatrix::stack(&[&a, &c]).unwrap();
    let (mut r1, mut r2) = (vec![0f32; 256], vec![0f32; 256]);
    s.dequantize_row(9, &mut r1);
    c.dequantize_row(1, &mut r2);
    assert_eq!(r1, r2);
    let odd = GgmlMatrix::from_gguf(f, 3, 256, &bytes[..3 * 144]).unwrap();
    assert!(GgmlMatrix::stack(&[&odd, &a]).is_none(), "3 rows do not fill an 8-row group");
}
