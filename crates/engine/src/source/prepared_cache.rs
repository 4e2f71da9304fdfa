//! A disk cache of prepared weights, for the modes that compute at load (static_int8: calibration,
//! SmoothQuant and static scales; int4: calibration and the scale search). The result depends only
//! on the checkpoint, the options and this engine's format, so it is computed once and kept:
//!
//! - an entry is a GGUF file of the prepared model (our export: Q8_0 / Q4_0 blocks byte for byte,
//!   smoothed norms in f32) and a JSON sidecar with what GGUF cannot hold (static activation
//!   scales, the calibration report), its size and a checksum of the GGUF;
//! - the key hashes the checkpoint's identity (a Hugging Face cache blob's content hash when the
//!   file is one, else its canonical path, size and modification time), the mode and every option
//!   that changes the result, and [`FORMAT_VERSION`];
//! - entries are written to temporary names and renamed (the GGUF first, the sidecar last, so a
//!   sidecar always describes a complete file); a sidecar that does not parse, or a GGUF whose size
//!   or checksum differs from it, is damage: the entry is deleted and rebuilt.
//!
//! `NANO_QWEN3_WEIGHT_CACHE=0` (or the `weightCache: false` load option) turns it off;
//! `NANO_QWEN3_WEIGHT_CACHE_DIR` moves it (default: the user cache directory's
//! `nano-qwen3-serving/prepared`).
use crate::acceleration::{AccelerationConfig, Quantization};
use crate::error::{EngineError, Result};
use crate::model::WeightFormat;
use crate::quantize::static_int8::{CalibrationReport, StaticScales};
use crate::source::ModelFiles;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Bump whenever what an entry holds, or how the engine prepares weights (calibration, SmoothQuant,
/// the quantizers), changes: released versions are also told apart by the package version.
pub const FORMAT_VERSION: u32 = 3; // 2: int4 activation-aware scaling, Q8_0 lm_head; 3: int4 importances derived, not recalibrated

/// What the cache did for this load (`getModelInfo().weightCache`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WeightCacheInfo {
    /// "hit" (weights read from the cache), "written" (computed, then stored), "rebuilt" (a damaged
    /// entry replaced), "off" (disabled), "not used" (this mode computes nothing at load), or
    /// "error" (computed; the cache could not be read or written, see `error`).
    pub status: &'static str,
    pub path: Option<PathBuf>,
    pub error: Option<String>,
}

impl WeightCacheInfo {
    pub fn status(status: &'static str) -> Self {
        Self { status, path: None, error: None }
    }
}

/// The sidecar of an entry.
#[derive(Serialize, Deserialize)]
pub struct Sidecar {
    pub format: u32,
    pub key: String,
    /// What the key was made of, for people looking at the cache.
    pub source: String,
    pub options: String,
    pub gguf_bytes: u64,
    pub gguf_checksum: String,
    pub static_scales: Vec<StaticScales>,
    pub calibration: Option<CalibrationReport>,
}

/// An entry found valid: its GGUF and sidecar.
pub struct Hit {
    pub gguf: PathBuf,
    pub sidecar: Sidecar,
}

pub enum Lookup {
    Hit(Hit),
    Miss,
    /// Present but unusable (why); deleted by the lookup.
    Damaged(String),
}

/// Whether `quantization` computes anything at load that the cache can keep.
pub fn applies(acc: &AccelerationConfig, source_is_q4_0: bool) -> bool {
    match acc.quantization {
        Quantization::StaticInt8 => true,
        Quantization::Int4 => !source_is_q4_0,
        _ => false,
    }
}

/// The cache directory, unless the environment turns the cache off.
pub fn dir_from_env() -> Option<PathBuf> {
    if std::env::var("NANO_QWEN3_WEIGHT_CACHE").is_ok_and(|v| v == "0" || v.eq_ignore_ascii_case("false")) {
        return None;
    }
    if let Some(p) = std::env::var_os("NANO_QWEN3_WEIGHT_CACHE_DIR") {
        return Some(PathBuf::from(p));
    }
    Some(crate::cache_dir::user_cache_dir()?.join("prepared"))
}

/// 128-bit non-cryptographic hash (two lanes of a multiply-xorshift over 8-byte words): detects
/// damage and tells keys apart, at memory speed.
pub fn checksum(bytes: &[u8]) -> String {
    let (mut a, mut b) = (0x9E37_79B9_7F4A_7C15u64 ^ bytes.len() as u64, 0xC2B2_AE3D_27D4_EB4Fu64);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().unwrap());
        a = (a ^ w).wrapping_mul(0xFF51_AFD7_ED55_8CCD).rotate_left(29);
        b = (b.rotate_left(17) ^ w).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    }
    for &x in words.remainder() {
        a = (a ^ x as u64).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        b = (b ^ x as u64).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    }
    let fin = |mut h: u64| {
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^ (h >> 33)
    };
    format!("{:016x}{:016x}", fin(a ^ b.rotate_left(32)), fin(b ^ a))
}

/// One file's identity: a hub blob's name is its content hash; anything else is known by where it
/// is, its size and when it last changed.
fn file_identity(path: &Path) -> Result<String> {
    let io = |e| EngineError::Io { path: path.into(), source: e };
    let real = std::fs::canonicalize(path).map_err(io)?;
    if real.parent().and_then(Path::file_name).is_some_and(|n| n == "blobs") {
        return Ok(format!("blob {}", real.file_name().unwrap_or_default().to_string_lossy()));
    }
    let meta = std::fs::metadata(&real).map_err(io)?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    Ok(format!("{} {} {mtime}", real.display(), meta.len()))
}

/// The files whose content the prepared weights depend on.
fn source_files(files: &ModelFiles) -> Result<Vec<PathBuf>> {
    match files {
        ModelFiles::Gguf(p) => Ok(vec![p.clone()]),
        ModelFiles::HfFolder(dir) => {
            let mut out = vec![dir.join("config.json")];
            let entries = std::fs::read_dir(dir).map_err(|e| EngineError::Io { path: dir.clone(), source: e })?;
            let mut weights: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "safetensors")).collect();
            weights.sort();
            out.extend(weights);
            Ok(out)
        }
    }
}

/// (key, source description, options description) for loading `files` with `acc` into `format`.
pub fn key(files: &ModelFiles, acc: &AccelerationConfig, format: WeightFormat) -> Result<(String, String, String)> {
    let source = source_files(files)?.iter().map(|p| file_identity(p)).collect::<Result<Vec<_>>>()?.join("; ");
    let calibration = serde_json::to_string(&acc.calibration.clone().unwrap_or_default()).unwrap_or_default();
    // The scale rule the loader applies: the one its format carries.
    let q4_scales = match format {
        WeightFormat::Q4 { scales, .. } => Some(scales),
        _ => None,
    };
    let options = format!(
        "{} group {} lm_head {:?} calibration {calibration} q4 scales {q4_scales:?} format {FORMAT_VERSION} engine {}",
        acc.quantization.name(),
        acc.int4_group_size,
        acc.int4_lm_head,
        env!("CARGO_PKG_VERSION")
    );
    Ok((checksum(format!("{source}\n{options}").as_bytes()), source, options))
}

fn paths(dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{key}.gguf")), dir.join(format!("{key}.json")))
}

fn checksum_file(path: &Path) -> std::io::Result<(u64, String)> {
    let file = std::fs::File::open(path)?;
    // SAFETY: read-only mapping of a file only this cache writes, and only by rename.
    let map = unsafe { Mmap::map(&file) }?;
    Ok((map.len() as u64, checksum(&map)))
}

/// Find `key` in `dir`; a damaged entry is deleted and reported as such.
pub fn lookup(dir: &Path, key: &str) -> Lookup {
    let (gguf, json) = paths(dir, key);
    let Ok(text) = std::fs::read_to_string(&json) else {
        return Lookup::Miss;
    };
    let damaged = |why: String| {
        let _ = std::fs::remove_file(&gguf);
        let _ = std::fs::remove_file(&json);
        Lookup::Damaged(why)
    };
    let sidecar: Sidecar = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => return damaged(format!("{}: {e}", json.display())),
    };
    if sidecar.format != FORMAT_VERSION || sidecar.key != key {
        return damaged(format!("{}: written for format {} / key {}", json.display(), sidecar.format, sidecar.key));
    }
    match checksum_file(&gguf) {
        Ok((bytes, sum)) if bytes == sidecar.gguf_bytes && sum == sidecar.gguf_checksum => Lookup::Hit(Hit { gguf, sidecar }),
        Ok((bytes, _)) => damaged(format!("{}: {bytes} bytes, checksum differs from the {} recorded", gguf.display(), sidecar.gguf_bytes)),
        Err(e) => damaged(format!("{}: {e}", gguf.display())),
    }
}

/// Store an entry: `write_gguf` writes the prepared model to the path it is given (atomically);
/// then the sidecar is written beside it and renamed into place.
pub fn store(
    dir: &Path,
    key: (&str, &str, &str),
    write_gguf: impl FnOnce(&Path) -> Result<u64>,
    static_scales: Vec<StaticScales>,
    calibration: Option<CalibrationReport>,
) -> Result<PathBuf> {
    let (key, source, options) = key;
    std::fs::create_dir_all(dir).map_err(|e| EngineError::Io { path: dir.into(), source: e })?;
    let (gguf, json) = paths(dir, key);
    write_gguf(&gguf)?;
    let (gguf_bytes, gguf_checksum) = checksum_file(&gguf).map_err(|e| EngineError::Io { path: gguf.clone(), source: e })?;
    let sidecar = Sidecar { format: FORMAT_VERSION, key: key.into(), source: source.into(), options: options.into(), gguf_bytes, gguf_checksum, static_scales, calibration };
    let text = serde_json::to_string(&sidecar).map_err(|e| EngineError::Internal(format!("weight cache sidecar: {e}")))?;
    let tmp = json.with_extension("json.partial");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &json))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            EngineError::Io { path: json.clone(), source: e }
        })?;
    Ok(gguf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nano_qwen3_kernels::Q4Scales;

    #[test]
    fn checksum_sees_every_byte_and_the_length() {
        let base = vec![7u8; 1001];
        let sum = checksum(&base);
        assert_eq!(sum.len(), 32);
        for at in [0, 500, 999, 1000] {
            let mut b = base.clone();
            b[at] ^= 1;
            assert_ne!(checksum(&b), sum, "a flipped bit at {at}");
        }
        assert_ne!(checksum(&base[..1000]), sum);
        assert_ne!(checksum(&[0u8; 8]), checksum(&[0u8; 16]), "zeros of another length");
        assert_eq!(checksum(&base), sum, "deterministic");
    }

    #[test]
    fn the_int4_scale_rule_is_part_of_the_key() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny");
        let files = crate::source::open(&fixture).unwrap().files;
        let acc = AccelerationConfig { quantization: Quantization::Int4, ..Default::default() };
        let q4 = |scales| WeightFormat::Q4 { group: 32, lm_head_q8: true, scales };
        let (searched, absmax) = (key(&files, &acc, q4(Q4Scales::Searched)).unwrap(), key(&files, &acc, q4(Q4Scales::Absmax)).unwrap());
        assert_ne!(searched.0, absmax.0);
        assert_eq!(key(&files, &acc, q4(Q4Scales::Searched)).unwrap(), searched, "deterministic");
    }

    #[test]
    fn only_modes_that_compute_at_load_are_cached() {
        let acc = |quantization| AccelerationConfig { quantization, ..Default::default() };
        assert!(applies(&acc(Quantization::StaticInt8), false));
        assert!(applies(&acc(Quantization::Int4), false));
        assert!(!applies(&acc(Quantization::Int4), true), "a Q4_0 file is used as it is");
        for q in [Quantization::None, Quantization::Fp32, Quantization::Fp16, Quantization::Bf16, Quantization::DynamicInt8] {
            assert!(!applies(&acc(q), false), "{}", q.name());
        }
    }
}
