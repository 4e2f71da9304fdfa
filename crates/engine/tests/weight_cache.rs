//! The prepared-weights disk cache: used on the second load with bit-identical logits, rebuilt when
//! damaged or when the checkpoint changes, never used by the modes that compute nothing at load.
use nano_qwen3_engine::source::prepared_cache::WeightCacheInfo;
use nano_qwen3_engine::{AccelerationConfig, CalibrationConfig, Engine, Int4LmHead, LoadOptions, Quantization};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny")
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nano-qwen3-wcache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn load(model: &Path, quantization: Quantization, cache: &Path) -> Engine {
    let acceleration = AccelerationConfig { quantization, ..Default::default() };
    let opts = LoadOptions { acceleration, threads: Some(2), weight_cache_dir: Some(cache.into()), ..Default::default() };
    Engine::load(model, &opts).unwrap()
}

const PROMPT: &[u32] = &[9707, 11, 1246, 525, 498, 30];

fn status(e: &Engine) -> &'static str {
    e.weight_cache.status
}

#[test]
fn second_load_reads_the_cache_and_computes_the_same_logits() {
    for q in [Quantization::StaticInt8, Quantization::Int4] {
        let dir = temp(q.name());
        let first = load(&fixture(), q, &dir);
        assert_eq!(status(&first), "written", "{}", q.name());
        let path = first.weight_cache.path.clone().unwrap();
        assert!(path.starts_with(&dir) && path.exists(), "{path:?}");
        let second = load(&fixture(), q, &dir);
        assert_eq!(second.weight_cache, WeightCacheInfo { status: "hit", path: Some(path.clone()), error: None });
        let want = first.compute_logits(PROMPT, true).unwrap();
        assert!(second.compute_logits(PROMPT, true).unwrap() == want, "{}: logits differ after a cache hit", q.name());
        assert_eq!(second.model.weight_format, first.model.weight_format);
        if q == Quantization::StaticInt8 {
            let (a, b) = (first.calibration.as_ref().unwrap(), second.calibration.as_ref().unwrap());
            assert!(a.static_sites > 0, "the fixture has static sites, so restoring their scales is tested");
            assert_eq!((a.static_sites, a.tokens, &a.dynamic_sites), (b.static_sites, b.tokens, &b.dynamic_sites));
        }
        // Damage: one byte of the weights flipped -> detected, deleted, rebuilt, same logits.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let third = load(&fixture(), q, &dir);
        assert_eq!(status(&third), "rebuilt", "{}", q.name());
        assert!(third.compute_logits(PROMPT, true).unwrap() == want, "{}: logits differ after a rebuild", q.name());
        assert_eq!(status(&load(&fixture(), q, &dir)), "hit");
        // A sidecar that does not parse is damage too.
        std::fs::write(path.with_extension("json"), "{ not json").unwrap();
        assert_eq!(status(&load(&fixture(), q, &dir)), "rebuilt");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn a_changed_checkpoint_or_option_is_a_new_entry() {
    let dir = temp("changed");
    let model = temp("changed-model");
    for f in std::fs::read_dir(fixture()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let first = load(&model, Quantization::Int4, &dir);
    assert_eq!(status(&first), "written");
    // Same bytes, written again: a new modification time, so a new identity.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let w = model.join("model.safetensors");
    std::fs::write(&w, std::fs::read(&w).unwrap()).unwrap();
    let second = load(&model, Quantization::Int4, &dir);
    assert_eq!(status(&second), "written");
    assert_ne!(second.weight_cache.path, first.weight_cache.path);
    // Another group size is another entry.
    let acceleration = AccelerationConfig { quantization: Quantization::Int4, int4_group_size: 128, ..Default::default() };
    let g128 = Engine::load(&model, &LoadOptions { acceleration, threads: Some(2), weight_cache_dir: Some(dir.clone()), ..Default::default() }).unwrap();
    assert_eq!(status(&g128), "written");
    // So are another lm_head format and another smoothing strength.
    for acceleration in [
        AccelerationConfig { quantization: Quantization::Int4, int4_lm_head: Int4LmHead::Q4_0, ..Default::default() },
        AccelerationConfig { quantization: Quantization::Int4, calibration: Some(CalibrationConfig { smoothing: Some(0.0), ..Default::default() }), ..Default::default() },
    ] {
        let e = Engine::load(&model, &LoadOptions { acceleration, threads: Some(2), weight_cache_dir: Some(dir.clone()), ..Default::default() }).unwrap();
        assert_eq!(status(&e), "written");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "gguf").count(), 5);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&model).ok();
}

#[test]
fn off_and_modes_that_compute_nothing_at_load_never_touch_it() {
    let dir = temp("off");
    for q in [Quantization::None, Quantization::Bf16, Quantization::DynamicInt8] {
        assert_eq!(status(&load(&fixture(), q, &dir)), "not used", "{}", q.name());
    }
    let acceleration = AccelerationConfig { quantization: Quantization::StaticInt8, ..Default::default() };
    let off = Engine::load(&fixture(), &LoadOptions { acceleration, threads: Some(2), weight_cache: false, weight_cache_dir: Some(dir.clone()), ..Default::default() }).unwrap();
    assert_eq!(status(&off), "off");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    // A cache directory that cannot be created: the load still succeeds and says why.
    let blocked = dir.join("file");
    std::fs::write(&blocked, "").unwrap();
    let e = load(&fixture(), Quantization::Int4, &blocked.join("sub"));
    assert_eq!(status(&e), "error");
    assert!(e.weight_cache.error.as_deref().unwrap().contains("sub"), "{:?}", e.weight_cache);
    std::fs::remove_dir_all(&dir).ok();
}
