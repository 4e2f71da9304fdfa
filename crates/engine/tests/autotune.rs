//! Compile mode max-autotune: tilings measured at load, cached on disk, read back on the next load,
//! and the tuned model still matches the transformers reference. One test: it sets the cache path.
use nano_qwen3_engine::acceleration::CompileMode;
use nano_qwen3_engine::{AccelerationConfig, Engine, LoadOptions, Quantization};
use std::path::PathBuf;

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn tilings_are_measured_cached_and_reused_and_the_model_stays_correct() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
    let cache = std::env::temp_dir().join(format!("nano-qwen3-autotune-test-{}/autotune.json", std::process::id()));
    std::env::set_var("NANO_QWEN3_AUTOTUNE_CACHE", &cache);
    let load = || {
        let acceleration = AccelerationConfig {
            quantization: Quantization::DynamicInt8,
            use_torch_compile: true,
            compile_mode: CompileMode::MaxAutotune,
            ..Default::default()
        };
        Engine::load(&dir, &LoadOptions { acceleration, threads: Some(2), ..Default::default() }).unwrap()
    };

    let first = load();
    let t = first.autotune.clone().expect("max-autotune ran");
    assert!(t.shapes >= 5 && t.measured == t.shapes && t.from_cache == 0, "{t:?}");
    assert_eq!(t.cache_error, None);
    let text = std::fs::read_to_string(&cache).unwrap();
    let entries: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(entries.len(), t.shapes);
    let cpu = nano_qwen3_engine::model::autotune::cpu_model();
    assert!(entries.keys().all(|k| k.starts_with(&cpu) && k.contains("2 threads")), "{:?}", entries.keys());
    let detail = &first.plan.items.iter().find(|i| i.option == "useTorchCompile").unwrap().detail;
    assert!(detail.contains(&format!("{} measured", t.shapes)), "{detail}");

    // The tuned model against the reference (same bound as dynamic_int8 in fixture.rs).
    let reference = candle_core::safetensors::load(dir.join("reference.safetensors"), &candle_core::Device::Cpu).unwrap();
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids: Vec<u32> = r["prompts"][0]["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let err = rel_l2(&first.compute_logits(&ids, false).unwrap(), &reference["last_logits.0"].to_vec1::<f32>().unwrap());
    assert!(err < 5e-2, "relative logit error {err}");

    // Second load: everything from the cache, same choices.
    let second = load();
    let t2 = second.autotune.clone().unwrap();
    assert_eq!((t2.measured, t2.from_cache), (0, t.shapes), "{t2:?}");
    assert_eq!(t2.chosen, t.chosen);

    // A damaged cache is reported, re-measured and rewritten.
    std::fs::write(&cache, "{ not json").unwrap();
    let t3 = load().autotune.unwrap();
    assert!(t3.cache_error.as_deref().is_some_and(|e| e.contains("autotune.json")), "{t3:?}");
    assert_eq!(t3.measured, t.shapes);
    assert!(serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&cache).unwrap()).is_ok());
    std::fs::remove_dir_all(cache.parent().unwrap()).unwrap();
}
