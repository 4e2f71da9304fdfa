//! Compile mode max-autotune: at load, every matmul shape of the model is timed with each
//! candidate tiling (tasks per thread, activation rows per L2 block) on the engine's threads, and
//! the fastest is kept. Winners are cached on disk, keyed by CPU model, thread count, kernel and
//! shape, so the next load on the same machine reads them instead of measuring.
use crate::model::linear::Linear;
use crate::model::Qwen3Model;
use crate::progress::{Progress, ProgressFn};
use nano_qwen3_kernels::tuning::{set_tiling, ShapeKey, Tiling};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Activation rows when timing the prefill (m > 1) tilings.
const PREFILL_ROWS: usize = 64;
/// Each candidate runs at least this long (and 3 times); its fastest call counts.
const MIN_TIME: Duration = Duration::from_millis(15);

/// What max-autotune did at load (reported in the execution plan).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AutotuneReport {
    /// Shapes tuned (decode and prefill count separately).
    pub shapes: usize,
    pub measured: usize,
    pub from_cache: usize,
    pub ms: f64,
    pub cache_file: Option<PathBuf>,
    /// Why the cache could not be read or written (tuning still applies to this process).
    pub cache_error: Option<String>,
    /// Chosen tilings: "kernel nxk decode|prefill" -> "tasks/thread x row block".
    pub chosen: BTreeMap<String, String>,
}

/// Where winners are cached: `NANO_QWEN3_AUTOTUNE_CACHE`, else the user's cache directory.
pub fn cache_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NANO_QWEN3_AUTOTUNE_CACHE") {
        return Some(PathBuf::from(p));
    }
    Some(crate::cache_dir::user_cache_dir()?.join("autotune.json"))
}

/// The CPU's model name (part of every cache key: a winner on one CPU says nothing of another).
pub fn cpu_model() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string()))
        .or_else(|| {
            let out = std::process::Command::new("sysctl").args(["-n", "machdep.cpu.brand_string"]).output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
        });
    format!("{} ({})", name.unwrap_or_else(|| "unknown cpu".into()), std::env::consts::ARCH)
}

#[derive(Serialize, serde::Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct Entry {
    tasks_per_thread: usize,
    m_block: usize,
}

fn cache_key(cpu: &str, key: &ShapeKey) -> String {
    let phase = if key.decode { "decode" } else { "prefill" };
    format!("{cpu} | {} threads | {} | {}x{} | {phase}", key.threads, key.kernel, key.n, key.k)
}

fn read_cache(path: &Path) -> Result<BTreeMap<String, Entry>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s).map_err(|e| format!("{}: {e} (ignored; re-measuring)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Write through a temporary file and a rename, so a reader never sees half a file.
fn write_cache(path: &Path, entries: &BTreeMap<String, Entry>) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(entries).expect("plain data")).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Deterministic activations in [-1, 1) for timing.
fn activations(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i.wrapping_mul(2654435761) >> 7) % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// Fastest call of `lin` over `m` rows with the tiling currently set for its shape.
fn time_call(lin: &Linear, x: &[f32], m: usize, y: &mut [f32]) -> Duration {
    lin.forward_slice(x, m, y); // warm: caches, scratch buffers
    let (started, mut best, mut reps) = (Instant::now(), Duration::MAX, 0);
    while reps < 3 || started.elapsed() < MIN_TIME {
        let t = Instant::now();
        lin.forward_slice(x, m, y);
        best = best.min(t.elapsed());
        reps += 1;
    }
    best
}

/// Tune every matmul of `model` for the current kernel pool (`threads` of them). Call inside
/// that pool's `install`.
pub fn autotune(model: &Qwen3Model, threads: usize, progress: Option<&ProgressFn>) -> AutotuneReport {
    let started = Instant::now();
    // One entry per distinct shape; the lm_head only ever sees one row per sequence.
    let mut jobs: Vec<(ShapeKey, &Linear)> = Vec::new();
    for (class, lin) in model.matmuls() {
        let (kernel, n, k) = (lin.kernel_name(), lin.n(), lin.k());
        for decode in [true, false] {
            let key = ShapeKey { kernel, n, k, threads, decode };
            if (decode || class != "lm_head") && !jobs.iter().any(|(j, _)| *j == key) {
                jobs.push((key, lin));
            }
        }
    }
    let cpu = cpu_model();
    let path = cache_file();
    let (mut cached, mut cache_error) = match path.as_deref().map(read_cache) {
        Some(Ok(c)) => (c, None),
        Some(Err(e)) => (BTreeMap::new(), Some(e)),
        None => (BTreeMap::new(), Some("no cache directory (set NANO_QWEN3_AUTOTUNE_CACHE)".into())),
    };
    let (mut measured, mut from_cache, mut chosen) = (0, 0, BTreeMap::new());
    for (i, (key, lin)) in jobs.iter().enumerate() {
        let ckey = cache_key(&cpu, key);
        let best = match cached.get(&ckey) {
            Some(e) => {
                from_cache += 1;
                Tiling { tasks_per_thread: e.tasks_per_thread, m_block: e.m_block }
            }
            None => {
                let m = if key.decode { 1 } else { PREFILL_ROWS };
                let x = activations(m * key.k);
                let mut y = vec![0f32; m * key.n];
                let mut best = (Duration::MAX, None);
                for t in Tiling::candidates(key.decode) {
                    set_tiling(*key, Some(t));
                    let d = time_call(lin, &x, m, &mut y);
                    if d < best.0 {
                        best = (d, Some(t));
                    }
                }
                measured += 1;
                let t = best.1.expect("at least one candidate");
                cached.insert(ckey, Entry { tasks_per_thread: t.tasks_per_thread, m_block: t.m_block });
                t
            }
        };
        set_tiling(*key, Some(best));
        let phase = if key.decode { "decode" } else { "prefill" };
        chosen.insert(format!("{} {}x{} {phase}", key.kernel, key.n, key.k), format!("{} tasks/thread, {} rows", best.tasks_per_thread, best.m_block));
        if let Some(p) = progress {
            p(&Progress { stage: "autotune", done: i + 1, total: jobs.len(), unit: "shapes" });
        }
    }
    if measured > 0 {
        if let Some(p) = &path {
            if let Err(e) = write_cache(p, &cached) {
                cache_error = Some(e);
            }
        }
    }
    AutotuneReport {
        shapes: jobs.len(),
        measured,
        from_cache,
        ms: started.elapsed().as_secs_f64() * 1000.0,
        cache_file: path,
        cache_error,
        chosen,
    }
}
