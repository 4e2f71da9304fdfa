//! Shared by the GPU tests: one context per test binary (pipelines compile once), fresh random
//! data, the CPU references' tolerance check. Without an adapter the tests skip and say why,
//! unless NANO_QWEN3_REQUIRE_GPU=1 (CI), where that is a failure.
#![allow(dead_code)]
use nano_qwen3_gpu::{DeviceRequest, GpuContext};
use std::sync::OnceLock;

pub fn ctx() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new(DeviceRequest::Any(None)) {
        Ok(c) => {
            let r = c.report();
            eprintln!(
                "GPU tests on {} ({}, {}, driver {} {}), features {:?}, subgroup size {}..{}",
                r.name, r.backend, r.device_type, r.driver, r.driver_info, r.features, r.subgroup_min_size, r.subgroup_max_size
            );
            eprintln!("subgroups seen by a 64-invocation workgroup (size, count): {:?}", c.probe_subgroups().unwrap());
            Some(c)
        }
        Err(e) => {
            if std::env::var("NANO_QWEN3_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("NANO_QWEN3_REQUIRE_GPU=1 but no GPU context: {e}");
            }
            eprintln!("SKIPPED: GPU tests need an adapter (install mesa-vulkan-drivers for lavapipe): {e}");
            None
        }
    })
    .as_ref()
}

/// Values in [-1, 1) from an xorshift seeded per call site (fresh data per test and seed).
pub fn rand(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A seed that differs per run (fresh data), printed so a failure can be replayed with
/// NANO_QWEN3_GPU_SEED.
pub fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("NANO_QWEN3_GPU_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("GPU test seed {s} (NANO_QWEN3_GPU_SEED={s} replays it)");
        s
    })
}

/// Every element within `tol` relative error (relative to max(|expected|, 1)); NaN never passes.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(err <= tol, "{what}: element {i}: got {g}, want {w} (error {err} > {tol})");
    }
}

use half::{bf16, f16};
use nano_qwen3_gpu::DType;

/// Random `[n, k]` weights in `dtype`: (the bytes to upload, the f32 values they decode to).
pub fn weights(dtype: DType, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let v = rand(n * k, seed);
    match dtype {
        DType::F32 => (bytemuck::cast_slice(&v).to_vec(), v),
        DType::F16 => {
            let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            (h.iter().flat_map(|x| x.to_le_bytes()).collect(), h.iter().map(|x| x.to_f32()).collect())
        }
        DType::Bf16 => {
            let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
            (h.iter().flat_map(|x| x.to_le_bytes()).collect(), h.iter().map(|x| x.to_f32()).collect())
        }
        DType::Q8_0 | DType::Q4_0 => {
            // Random codes and scales (every code value reachable), not a quantizer: the kernels
            // must decode the stored layout, whatever produced it.
            let codes = rand(n * k, seed ^ 0x5bd1e995);
            let (mut bytes, mut deq) = (Vec::new(), Vec::new());
            for b in 0..n * k / 32 {
                let d = f16::from_f32(0.01 + 0.05 * v[b * 32].abs());
                bytes.extend_from_slice(&d.to_le_bytes());
                let q: Vec<i32> = (0..32)
                    .map(|i| {
                        let c = (codes[b * 32 + i] + 1.0) / 2.0; // [0, 1)
                        if dtype == DType::Q8_0 { (c * 255.0) as i32 - 127 } else { (c * 16.0) as i32 - 8 }
                    })
                    .collect();
                if dtype == DType::Q8_0 {
                    bytes.extend(q.iter().map(|&x| x as i8 as u8));
                } else {
                    bytes.extend((0..16).map(|i| ((q[i] + 8) as u8) | (((q[i + 16] + 8) as u8) << 4)));
                }
                deq.extend(q.iter().map(|&x| x as f32 * d.to_f32()));
            }
            (bytes, deq)
        }
        DType::U32 => unreachable!(),
    }
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` in f64.
pub fn matmul_ref(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k).map(|c| x[i * k + c] as f64 * w[j * k + c] as f64).sum::<f64>() as f32;
        }
    }
    y
}
