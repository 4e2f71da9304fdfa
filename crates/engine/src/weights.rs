//! Safetensors checkpoints (single file or sharded with `model.safetensors.index.json`),
//! memory-mapped: each tensor is converted straight from the mapping into its runtime dtype.
use crate::error::{EngineError, Result};
use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    files: MmapedSafetensors,
    /// tensor name -> file it lives in, for error messages.
    location: HashMap<String, PathBuf>,
}

/// Returns the tensor names in the file.
fn validate_file(path: &Path) -> Result<Vec<String>> {
    // Check the header against the file size ourselves: a truncated file must be reported as
    // such, naming the file, before anything is mapped.
    let bytes = std::fs::metadata(path).map_err(|e| EngineError::Io { path: path.into(), source: e })?.len();
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::Io { path: path.into(), source: e })?;
    let mut len = [0u8; 8];
    use std::io::Read;
    if bytes < 8 || f.read_exact(&mut len).is_err() {
        return Err(EngineError::bad_file(path, format!("truncated safetensors file ({bytes} bytes, no header)")));
    }
    let header_len = u64::from_le_bytes(len);
    if header_len > bytes - 8 || header_len > 100_000_000 {
        return Err(EngineError::bad_file(
            path,
            format!("corrupt safetensors header: header length {header_len} but file has {bytes} bytes"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| EngineError::Io { path: path.into(), source: e })?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| EngineError::bad_file(path, format!("corrupt safetensors header: {e}")))?;
    let data_end = header
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|t| t.get("data_offsets")?.as_array()?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let available = bytes - 8 - header_len;
    if data_end > available {
        return Err(EngineError::bad_file(
            path,
            format!("truncated safetensors file: tensors need {data_end} data bytes, file holds {available}"),
        ));
    }
    Ok(header.as_object().into_iter().flat_map(|m| m.keys()).filter(|k| *k != "__metadata__").cloned().collect())
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| EngineError::Io { path: index.clone(), source: e })?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| EngineError::bad_file(&index, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| EngineError::bad_file(&index, "no \"weight_map\" object"))?;
            let names: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut location = HashMap::new();
        for f in &files {
            if !f.exists() {
                return Err(EngineError::ModelNotFound(format!("weights file {} does not exist", f.display())));
            }
            for name in validate_file(f)? {
                location.insert(name, f.clone());
            }
        }
        // SAFETY: the files are opened read-only; like every mmap, they must not be truncated
        // while mapped, which is the usual contract for model files.
        let mapped = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| EngineError::bad_file(&files[0], format!("cannot read safetensors: {e}")))?;
        Ok(Self { files: mapped, location })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Total bytes of all tensors as stored in the checkpoint.
    pub fn stored_bytes(&self) -> usize {
        self.files.tensors().iter().map(|(_, v)| v.data().len()).sum()
    }

    /// Load one tensor, checking its shape and dtype, converted to `dtype` (None: as stored).
    pub fn load(&self, name: &str, shape: &[usize], dtype: Option<DType>, dev: &Device) -> Result<Tensor> {
        let file = self.location.get(name).ok_or_else(|| {
            EngineError::bad_file(
                self.location.values().next().cloned().unwrap_or_default(),
                format!("required tensor \"{name}\" is missing from the checkpoint"),
            )
        })?;
        let view = self.files.get(name).map_err(|e| EngineError::bad_file(file, e.to_string()))?;
        if view.shape() != shape {
            return Err(EngineError::bad_file(
                file,
                format!("tensor \"{name}\" has shape {:?}, expected {:?} from config.json", view.shape(), shape),
            ));
        }
        use safetensors::Dtype as S;
        if !matches!(view.dtype(), S::BF16 | S::F16 | S::F32) {
            return Err(EngineError::bad_file(
                file,
                format!("tensor \"{name}\" has dtype {:?}; supported: BF16, F16, F32", view.dtype()),
            ));
        }
        let t = view.load(dev).map_err(|e| EngineError::bad_file(file, format!("tensor \"{name}\": {e}")))?;
        Ok(match dtype {
            Some(d) if d != t.dtype() => t.to_dtype(d)?,
            _ => t,
        })
    }
}
