//! Safetensors checkpoints (single file or sharded with `model.safetensors.index.json`).
//!
//! Files are memory-mapped and their headers checked against the file sizes before any tensor is
//! read. Each tensor is copied once, straight from the mapping into its tensor, and the mapped
//! pages are then released, so peak memory stays near the size of the loaded weights instead of
//! weights + mapped file.
use crate::error::{EngineError, Result};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use nano_qwen3_kernels::ggml::Format;
use nano_qwen3_kernels::{Q4Matrix, Q8Matrix, QuantMatrix};

/// A tensor as a model source stores it: dense, or in one of the block formats we run as stored.
pub enum StoredTensor {
    Dense(Tensor),
    Q8(Q8Matrix),
    Q4(Q4Matrix),
    /// A GGUF block format we run as stored (k-quants, Q5_0, Q4_1, Q5_1): `[n, k]`, the file's
    /// row-major blocks, sizes checked. The model repacks them, or dequantizes for other modes.
    Blocks { format: Format, n: usize, k: usize, bytes: Vec<u8> },
}

impl StoredTensor {
    /// Dense values, dequantizing block formats, converted to `dtype` (None: as stored, f32 for blocks).
    pub fn into_dense(self, dtype: Option<DType>) -> Result<Tensor> {
        let t = match self {
            StoredTensor::Dense(t) => t,
            StoredTensor::Q8(q) => Tensor::from_vec(q.dequantize(), (q.n, q.k), &Device::Cpu)?,
            StoredTensor::Q4(q) => Tensor::from_vec(q.dequantize(), (q.n, q.k), &Device::Cpu)?,
            StoredTensor::Blocks { format, n, k, bytes } => Tensor::from_vec(dequantize_blocks(format, &bytes, n * k), (n, k), &Device::Cpu)?,
        };
        Ok(match dtype {
            Some(d) if d != t.dtype() => t.to_dtype(d)?,
            _ => t,
        })
    }

    /// The values as one f32 vector (for quantizers and calibration).
    pub fn into_f32_vec(self) -> Result<Vec<f32>> {
        Ok(match self {
            StoredTensor::Q8(q) => q.dequantize(),
            StoredTensor::Q4(q) => q.dequantize(),
            StoredTensor::Blocks { format, n, k, bytes } => dequantize_blocks(format, &bytes, n * k),
            d => d.into_dense(Some(DType::F32))?.flatten_all()?.to_vec1::<f32>()?,
        })
    }
}

/// GGUF blocks to f32 with GGUF's reference dequantizers.
fn dequantize_blocks(format: Format, bytes: &[u8], values: usize) -> Vec<f32> {
    let mut out = vec![0f32; values];
    nano_qwen3_kernels::ggml::dequantize_gguf(format, bytes, &mut out);
    out
}

/// Where model weights come from: a safetensors checkpoint, a GGUF file, or a transformed set.
/// Names and shapes are Hugging Face's (`model.layers.0.mlp.up_proj.weight`, `[out, in]`).
/// Tensors come back in host memory: the forward pass runs on the CPU.
pub trait TensorSource: Sync {
    fn load_stored(&self, name: &str, shape: &[usize]) -> Result<StoredTensor>;
    fn stored_bytes(&self) -> usize;
    fn has(&self, name: &str) -> bool;
    /// The stored format's name ("bf16", "q8_0", "q4_k", ...), for reports.
    fn stored_format(&self, name: &str) -> Option<String>;
}

struct Entry {
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    tensors: HashMap<String, Entry>,
}

fn dtype_of(name: &str) -> Option<DType> {
    match name {
        "BF16" => Some(DType::BF16),
        "F16" => Some(DType::F16),
        "F32" => Some(DType::F32),
        _ => None,
    }
}

/// Read and check one file's header: every tensor's byte range must lie inside the file and match
/// its shape, so a truncated or corrupt file is reported by name before anything is loaded.
fn read_header(path: &Path, file: usize, out: &mut HashMap<String, Entry>) -> Result<()> {
    let io = |e| EngineError::Io { path: path.into(), source: e };
    let bytes = std::fs::metadata(path).map_err(io)?.len() as usize;
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    if bytes < 8 || f.read_exact(&mut len).is_err() {
        return Err(EngineError::bad_file(path, format!("truncated safetensors file ({bytes} bytes, no header)")));
    }
    let header_len = u64::from_le_bytes(len) as usize;
    if header_len > bytes - 8 || header_len > 100_000_000 {
        return Err(EngineError::bad_file(
            path,
            format!("corrupt safetensors header: header length {header_len} but file has {bytes} bytes"),
        ));
    }
    let mut header = vec![0u8; header_len];
    f.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| EngineError::bad_file(path, format!("corrupt safetensors header: {e}")))?;
    let data_start = 8 + header_len;
    for (name, t) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| EngineError::bad_file(path, format!("corrupt safetensors header: tensor \"{name}\" {what}"));
        let dtype = t.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("has no dtype"))?.to_string();
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad("has no valid shape"))?;
        let offsets: Vec<usize> = t
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .filter(|o: &Vec<usize>| o.len() == 2 && o[0] <= o[1])
            .ok_or_else(|| bad("has no valid data_offsets"))?;
        let (start, end) = (data_start + offsets[0], data_start + offsets[1]);
        if end > bytes {
            return Err(EngineError::bad_file(
                path,
                format!("truncated safetensors file: tensor \"{name}\" needs bytes up to {end}, file holds {bytes}"),
            ));
        }
        if let Some(dt) = dtype_of(&dtype) {
            let want = shape.iter().product::<usize>() * dt.size_in_bytes();
            if end - start != want {
                return Err(bad(&format!("has {} bytes for shape {shape:?} {dtype} ({want} expected)", end - start)));
            }
        }
        out.insert(name, Entry { file, dtype, shape, start, end });
    }
    Ok(())
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.exists() {
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
        let mut tensors = HashMap::new();
        let mut files = Vec::with_capacity(paths.len());
        for (i, path) in paths.into_iter().enumerate() {
            if !path.exists() {
                return Err(EngineError::ModelNotFound(format!("weights file {} does not exist", path.display())));
            }
            read_header(&path, i, &mut tensors)?;
            let file = std::fs::File::open(&path).map_err(|e| EngineError::Io { path: path.clone(), source: e })?;
            // SAFETY: mapped read-only; like any mmap the file must not be truncated while loading.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::Io { path: path.clone(), source: e })?;
            files.push((path, map));
        }
        // Checkpoints saved from the bare model (Qwen3-Embedding) name their tensors without the
        // "model." prefix ("layers.0...", "embed_tokens.weight"): read them under the usual names.
        if tensors.contains_key("embed_tokens.weight") && !tensors.keys().any(|k| k.starts_with("model.")) {
            tensors = tensors.into_iter().map(|(k, e)| (if k == "lm_head.weight" { k } else { format!("model.{k}") }, e)).collect();
        }
        Ok(Self { files, tensors })
    }

    /// Total bytes of all tensors as stored in the checkpoint.
    pub fn stored_bytes(&self) -> usize {
        self.tensors.values().map(|e| e.end - e.start).sum()
    }

    /// Load one tensor, checking its shape and dtype, converted to `dtype` (None: as stored).
    pub fn load(&self, name: &str, shape: &[usize], dtype: Option<DType>) -> Result<Tensor> {
        let e = self.tensors.get(name).ok_or_else(|| {
            EngineError::bad_file(
                self.files.first().map(|f| f.0.clone()).unwrap_or_default(),
                format!("required tensor \"{name}\" is missing from the checkpoint"),
            )
        })?;
        let (path, map) = &self.files[e.file];
        if e.shape != shape {
            return Err(EngineError::bad_file(
                path,
                format!("tensor \"{name}\" has shape {:?}, expected {:?} from config.json", e.shape, shape),
            ));
        }
        let stored = dtype_of(&e.dtype).ok_or_else(|| {
            EngineError::bad_file(path, format!("tensor \"{name}\" has dtype {}; supported: BF16, F16, F32", e.dtype))
        })?;
        let t = Tensor::from_raw_buffer(&map[e.start..e.end], stored, shape, &Device::Cpu)?;
        release_pages(map, e.start, e.end - e.start);
        Ok(match dtype {
            Some(d) if d != stored => t.to_dtype(d)?,
            _ => t,
        })
    }
}

impl TensorSource for Checkpoint {
    fn load_stored(&self, name: &str, shape: &[usize]) -> Result<StoredTensor> {
        Ok(StoredTensor::Dense(self.load(name, shape, None)?))
    }
    fn stored_bytes(&self) -> usize {
        Checkpoint::stored_bytes(self)
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn stored_format(&self, name: &str) -> Option<String> {
        self.tensors.get(name).map(|e| e.dtype.to_lowercase())
    }
}

/// Drop the mapped pages of a tensor that has been copied out: they are file-backed and would
/// otherwise count towards this process's memory until the whole file is unmapped.
pub(crate) fn release_pages(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: the pages belong to a read-only private file mapping; after DONTNEED a later read
    // would fault them in again from the file, so no data is lost.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len);
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}
