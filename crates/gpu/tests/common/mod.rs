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
