use super::*;
use crate::q4::Q4Scales;
use crate::quant::test_data;

const MS: [usize; 5] = [1, 2, 3, 7, 50];
const NS: [usize; 6] = [1, 7, 8, 9, 37, 64];
const KS: [usize; 3] = [32, 96, 1024];

/// Bell-shaped weights (as trained ones), so Q4 scales and nibbles take varied values.
fn weights(len: usize, seed: u64) -> Vec<f32> {
    let [a, b, c] = [0, 1, 2].map(|i| test_data(len, seed * 3 + i));
    (0..len).map(|i| (a[i] + b[i] + c[i]) / 3.0).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn simd_close(simd: &[f32], portable: &[f32], what: &str) {
    for (a, b) in simd.iter().zip(portable) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: simd {a} vs portable {b}");
    }
}

/// Each repacked path against the row-major kernels on every shape: portable bit for bit
/// (same integer sums, same f32 operations in the same order), AVX2 within rounding.
fn check_all_shapes<Q: QuantMatrix, R: QuantMatrix>(ks: &[usize], make: impl Fn(&[f32], usize, usize) -> Q, repack: impl Fn(&Q) -> R) {
    for &k in ks {
        for &n in &NS {
            let q = make(&weights(n * k, (n * 7 + k) as u64), n, k);
            let r = repack(&q);
            for &m in &MS {
                let x = test_data(m * k, (m * 13 + n) as u64);
                let what = format!("{} m={m} n={n} k={k}", r.name());
                // Sentinel outputs: padded rows must not write past n.
                let (mut want, mut got) = (vec![0f32; m * n + 1], vec![f32::NAN; m * n + 1]);
                want[m * n] = 7.0;
                got[m * n] = 7.0;
                q.linear(&x, m, &mut want, Isa::Portable);
                r.linear(&x, m, &mut got, Isa::Portable);
                assert_eq!(bits(&got), bits(&want), "{what}: portable differs from the row-major kernel");
                for isa in Isa::simd_paths() {
                    let mut simd = vec![f32::NAN; m * n + 1];
                    simd[m * n] = 7.0;
                    r.linear(&x, m, &mut simd, isa);
                    simd_close(&simd, &want, &format!("{what} {}", isa.name()));
                    assert_eq!(simd[m * n], 7.0);
                }
            }
        }
    }
}

#[test]
fn repack_q8_matches_row_major_on_every_shape() {
    check_all_shapes(&KS, Q8Matrix::quantize, Q8x8Matrix::from_q8);
}

#[test]
fn repack_q4_matches_row_major_on_every_shape() {
    check_all_shapes(&KS, Q4Matrix::quantize, Q4x8Matrix::from_q4);
}

/// int4 groups of 64 and 128: one scale row per group in the repacked layout, and still the
/// row-major kernel's bits (the same scale repeated in each block there).
#[test]
fn repack_q4_groups_store_one_scale_per_group() {
    for (group, blocks) in [(64, 2), (128, 4)] {
        let make = |w: &[f32], n, k| Q4Matrix::quantize_with(w, n, k, None, group, Q4Scales::Searched);
        check_all_shapes(&[128, 384, 1024], make, |q: &Q4Matrix| {
            let r = Q4x8Matrix::from_q4(q);
            assert_eq!(r.group_blocks, blocks);
            r
        });
        let (n, k) = (37, 1024);
        let q = make(&weights(n * k, 9), n, k);
        let r = Q4x8Matrix::from_q4(&q);
        let row_blocks = n.div_ceil(ROWS) * ROWS * k / 32;
        // 16 bytes of nibbles per row-block, 2 bytes of scale per row-group of `blocks`.
        assert_eq!(r.bytes(), row_blocks * 16 + row_blocks / blocks * 2);
        let back = r.to_q4();
        assert!(back.blocks.iter().zip(&q.blocks).all(|(a, b)| (a.d.to_bits(), a.qs) == (b.d.to_bits(), b.qs)));
        assert_eq!(bits(&r.dequantize()), bits(&q.dequantize()));
    }
}

/// VNNI's integer sums are exact and its f32 steps are AVX2's: the same bits, every shape.
#[test]
fn vnni_tiles_give_the_avx2_bits() {
    if !Isa::Avx512Vnni.supported() {
        eprintln!("no AVX-512 VNNI on this CPU: scripts/test-avx512.sh runs this test in an emulator");
        return;
    }
    for &k in &KS {
        for &n in &NS {
            let w = weights(n * k, (n * 3 + k) as u64);
            let mut mats: Vec<Box<dyn QuantMatrix>> = vec![
                Box::new(Q8x8Matrix::from_q8(&Q8Matrix::quantize(&w, n, k))),
                Box::new(Q8x8Matrix::from_q8(&Q8Matrix::quantize(&w, n, k).with_static_scales(vec![0.004; k / QK8]))),
                Box::new(Q4x8Matrix::from_q4(&Q4Matrix::quantize(&w, n, k))),
            ];
            if k % 128 == 0 {
                mats.push(Box::new(Q4x8Matrix::from_q4(&Q4Matrix::quantize_with(&w, n, k, None, 128, Q4Scales::Searched))));
            }
            for &m in &MS {
                let x = test_data(m * k, (m * 5 + n) as u64);
                for q in &mats {
                    let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
                    q.linear(&x, m, &mut a, Isa::Avx2);
                    q.linear(&x, m, &mut b, Isa::Avx512Vnni);
                    assert_eq!(bits(&b), bits(&a), "{} m={m} n={n} k={k}", q.name());
                }
            }
        }
    }
}

#[test]
fn repack_q8_static_scales_work_the_same() {
    for &(m, n, k) in &[(1usize, 37usize, 1024usize), (7, 9, 96), (50, 64, 96)] {
        let x = test_data(m * k, 21);
        // Scales for half of x's range: part of the activations saturate at ±127.
        let scales: Vec<f32> = (0..k / QK8).map(|b| 0.5 / 127.0 * (1.0 + (b % 3) as f32)).collect();
        let q = Q8Matrix::quantize(&weights(n * k, 22), n, k).with_static_scales(scales.clone());
        let r = Q8x8Matrix::from_q8(&q);
        assert_eq!(r.act_scales.as_deref(), Some(&scales[..]));
        let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
        q.linear(&x, m, &mut want, Isa::Portable);
        r.linear(&x, m, &mut got, Isa::Portable);
        assert_eq!(bits(&got), bits(&want));
        // And they are used: the dynamic matrix gives other results.
        let mut dynamic = vec![0f32; m * n];
        Q8x8Matrix::from_q8(&Q8Matrix::quantize(&weights(n * k, 22), n, k)).linear(&x, m, &mut dynamic, Isa::Portable);
        assert_ne!(bits(&dynamic), bits(&want));
        for isa in Isa::simd_paths() {
            r.linear(&x, m, &mut got, isa);
            simd_close(&got, &want, &format!("static {}", isa.name()));
        }
    }
}

/// Deterministic raw bytes: the round trips must hold for any block content, not just
/// what the quantizers produce.
fn raw_bytes(len: usize, seed: u64) -> Vec<u8> {
    test_data(len, seed).iter().map(|v| ((v + 1.0) * 128.0) as u8).collect()
}

fn raw_scale(i: usize, bytes: &[u8]) -> f16 {
    // Any finite f16, subnormals and negative zero included (exact through f32).
    let b = u16::from_le_bytes([bytes[i], bytes[i + 1]]) & 0x7BFF;
    if i % 5 == 0 { f16::from_bits(0x8000) } else { f16::from_bits(b | if i % 2 == 0 { 0x8000 } else { 0 }) }
}

#[test]
fn repack_round_trips_are_exact() {
    for &(n, k) in &[(1usize, 32usize), (7, 64), (8, 32), (9, 96), (37, 1024), (64, 96)] {
        let bpr = k / 32;
        let raw = raw_bytes(n * bpr * 36, (n + k) as u64);
        let q8: Vec<BlockQ8> = (0..n * bpr)
            .map(|i| BlockQ8 { d: raw_scale(i * 36, &raw), qs: std::array::from_fn(|e| raw[i * 36 + 2 + e] as i8) })
            .collect();
        let q8 = Q8Matrix::from_blocks(n, k, q8).with_static_scales((0..bpr).map(|b| b as f32 * 0.01).collect());
        let back = Q8x8Matrix::from_q8(&q8).to_q8();
        assert_eq!((back.n, back.k, back.act_scales.as_ref()), (n, k, q8.act_scales.as_ref()));
        assert_eq!(back.blocks.len(), q8.blocks.len());
        for (a, b) in back.blocks.iter().zip(&q8.blocks) {
            assert_eq!((a.d.to_bits(), a.qs), (b.d.to_bits(), b.qs));
        }
        let q4 = Q4Matrix {
            n,
            k,
            blocks: (0..n * bpr)
                .map(|i| BlockQ4 { d: raw_scale(i * 36, &raw), qs: std::array::from_fn(|e| raw[i * 36 + 2 + e]) })
                .collect(),
        };
        let back = Q4x8Matrix::from_q4(&q4).to_q4();
        assert_eq!((back.n, back.k, back.blocks.len()), (n, k, q4.blocks.len()));
        for (a, b) in back.blocks.iter().zip(&q4.blocks) {
            assert_eq!((a.d.to_bits(), a.qs), (b.d.to_bits(), b.qs));
        }
    }
}

#[test]
fn repack_dequantize_row_equals_the_original() {
    for &(n, k) in &[(1usize, 32usize), (9, 96), (37, 1024)] {
        let w = weights(n * k, 5);
        let q8 = Q8Matrix::quantize(&w, n, k);
        let q4 = Q4Matrix::quantize(&w, n, k);
        let (r8, r4) = (Q8x8Matrix::from_q8(&q8), Q4x8Matrix::from_q4(&q4));
        assert_eq!(bits(&r8.dequantize()), bits(&q8.dequantize()));
        assert_eq!(bits(&r4.dequantize()), bits(&q4.dequantize()));
    }
}

#[test]
fn repack_memory_stays_within_budget() {
    let (n, k) = (37, 1024);
    let w = weights(n * k, 6);
    let row_blocks = n.div_ceil(ROWS) * ROWS * k / 32; // padded rows included
    // Exactly Q8_0's 34 and Q4_0's 18 bytes per row-block (only the padding rows are extra).
    assert_eq!(Q8x8Matrix::from_q8(&Q8Matrix::quantize(&w, n, k)).bytes(), row_blocks * 34);
    assert_eq!(Q4x8Matrix::from_q4(&Q4Matrix::quantize(&w, n, k)).bytes(), row_blocks * 18);
}

/// Extreme integers: the i16 intermediate sums must neither saturate nor wrap. With one block
/// both paths round once (`0 + s·d` vs `fma(s, d, 0)`), so they must agree exactly.
#[test]
fn repack_extreme_values_do_not_overflow() {
    let (m, n, k) = (3, 9, 32);
    let run = |f: &dyn Fn(&mut [f32], Isa)| {
        let mut a = vec![0f32; m * n];
        f(&mut a, Isa::Portable);
        for isa in Isa::simd_paths() {
            let mut b = vec![0f32; m * n];
            f(&mut b, isa);
            assert_eq!(bits(&a), bits(&b), "{}", isa.name());
        }
        a
    };
    let near = |y: &[f32], want: f32| assert!(y.iter().all(|v| (v - want).abs() < 0.01 * want.abs()), "{y:?} vs {want}");
    // All weights -127 and all activations ±127: every maddubs pair is 2·127·127.
    let q8 = Q8x8Matrix::from_q8(&Q8Matrix::quantize(&vec![-1.0; n * k], n, k));
    // Q4 nibbles all 0 (-8) or all 15 (+7), scale 1.
    let q4 = |nib: u8| Q4x8Matrix::from_q4(&Q4Matrix { n, k, blocks: vec![BlockQ4 { d: f16::ONE, qs: [nib * 0x11; 16] }; n] });
    let (q4_lo, q4_hi) = (q4(0), q4(15));
    for sign in [1.0f32, -1.0] {
        let x = vec![sign; m * k];
        near(&run(&|y, isa| q8.linear(&x, m, y, isa)), -32.0 * sign);
        near(&run(&|y, isa| q4_lo.linear(&x, m, y, isa)), -256.0 * sign);
        near(&run(&|y, isa| q4_hi.linear(&x, m, y, isa)), 224.0 * sign);
    }
}

/// The SwiGLU epilogue gives the bits of the matmul followed by the separate pass, on every
/// ISA and pool size; odd `inter` (not a multiple of 8) takes the unfused route.
#[test]
fn swiglu_epilogue_matches_matmul_then_silu_mul() {
    let k = 96;
    for inter in [8, 40, 44] {
        let n = 2 * inter;
        let w = weights(n * k, inter as u64);
        let mats: Vec<Box<dyn QuantMatrix>> =
            vec![Box::new(Q8x8Matrix::from_q8(&Q8Matrix::quantize(&w, n, k))), Box::new(Q4x8Matrix::from_q4(&Q4Matrix::quantize(&w, n, k)))];
        for threads in [1, 3] {
            let pool = crate::pool::ThreadPool::new(threads).unwrap();
            for m in [1, 5, 37] {
                let x = test_data(m * k, (m + inter) as u64);
                for q in &mats {
                    for isa in std::iter::once(Isa::Portable).chain(Isa::simd_paths()) {
                        let (mut gu, mut want) = (vec![0f32; m * n], vec![0f32; m * inter]);
                        q.linear(&x, m, &mut gu, isa);
                        crate::fused::silu_mul(&gu, inter, &mut want);
                        let (mut gu2, mut act) = (vec![f32::NAN; m * n], vec![f32::NAN; m * inter]);
                        pool.install(|| q.linear_swiglu(&x, m, &mut gu2, &mut act, isa));
                        let what = format!("{} {} m={m} inter={inter} threads={threads}", q.name(), isa.name());
                        assert_eq!(bits(&act), bits(&want), "{what}");
                        assert_eq!(bits(&gu2), bits(&gu), "{what}");
                    }
                }
            }
        }
    }
}

/// Task splitting in another pool size: same bits as the current pool.
#[test]
fn repack_results_do_not_depend_on_the_pool() {
    let (m, n, k) = (5, 203, 96);
    let x = test_data(m * k, 31);
    let r = Q4x8Matrix::from_q4(&Q4Matrix::quantize(&weights(n * k, 32), n, k));
    let isa = crate::active_isa();
    let mut a = vec![0f32; m * n];
    r.linear(&x, m, &mut a, isa);
    for threads in [1, 3] {
        let pool = crate::pool::ThreadPool::new(threads).unwrap();
        let mut b = vec![0f32; m * n];
        pool.install(|| r.linear(&x, m, &mut b, isa));
        assert_eq!(bits(&a), bits(&b), "{threads} threads");
    }
}
