//! GGUF files (v2/v3) as a model source: metadata, tensor table and data, all checked against the
//! file size before anything is loaded. F32 / F16 / BF16 / Q8_0 / Q4_0 tensors load natively
//! (Q8_0 and Q4_0 are our block layouts); Q4_K, Q5_K, Q6_K, Q5_0, Q4_1 and Q5_1 matrices come as
//! the file's blocks, which the model runs as stored ([`nano_qwen3_kernels::ggml`]); Q2_K and
//! Q3_K are dequantized at load ([`TYPES`] is the list).
use crate::error::{EngineError, Result};
use crate::source::weights::{release_pages, StoredTensor, TensorSource};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use nano_qwen3_kernels::ggml::{dequantize_gguf, Format};
use nano_qwen3_kernels::{kquants, legacy_quants, BlockQ4, BlockQ8, Q4Matrix, Q8Matrix, QuantMatrix};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A metadata value. Arrays of numbers are kept as i64/f64; strings as String.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

impl Meta {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Meta::Int(i) if *i >= 0 => Some(*i as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Meta::Float(f) => Some(*f),
            Meta::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Meta::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Meta]> {
        match self {
            Meta::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// How a ggml type becomes weights: kept in one of our run formats, run as stored by the GGUF
/// block kernels, or dequantized to f32 at load.
#[derive(Clone, Copy)]
enum Handling {
    Dense(DType),
    Q8_0,
    Q4_0,
    Stored(Format),
    Dequantize(fn(&[u8], &mut [f32])),
}

/// A ggml tensor type this reader loads: id, name, values and bytes per block, handling.
struct GgmlType(u32, &'static str, usize, usize, Handling);

/// The one list of loadable ggml types (ids from ggml.h).
const TYPES: &[GgmlType] = &[
    GgmlType(0, "F32", 1, 4, Handling::Dense(DType::F32)),
    GgmlType(1, "F16", 1, 2, Handling::Dense(DType::F16)),
    GgmlType(30, "BF16", 1, 2, Handling::Dense(DType::BF16)),
    GgmlType(8, "Q8_0", 32, 34, Handling::Q8_0),
    GgmlType(2, "Q4_0", 32, 18, Handling::Q4_0),
    GgmlType(3, "Q4_1", 32, legacy_quants::Q4_1_BYTES, Handling::Stored(Format::Q4_1)),
    GgmlType(6, "Q5_0", 32, legacy_quants::Q5_0_BYTES, Handling::Stored(Format::Q5_0)),
    GgmlType(7, "Q5_1", 32, legacy_quants::Q5_1_BYTES, Handling::Stored(Format::Q5_1)),
    GgmlType(10, "Q2_K", 256, kquants::Q2K_BYTES, Handling::Dequantize(kquants::dequantize_q2_k)),
    GgmlType(11, "Q3_K", 256, kquants::Q3K_BYTES, Handling::Dequantize(kquants::dequantize_q3_k)),
    GgmlType(12, "Q4_K", 256, kquants::Q4K_BYTES, Handling::Stored(Format::Q4K)),
    GgmlType(13, "Q5_K", 256, kquants::Q5K_BYTES, Handling::Stored(Format::Q5K)),
    GgmlType(14, "Q6_K", 256, kquants::Q6K_BYTES, Handling::Stored(Format::Q6K)),
];

fn type_info(id: u32) -> Option<&'static GgmlType> {
    TYPES.iter().find(|t| t.0 == id)
}

/// "F32, F16, BF16, Q8_0, Q4_0, Q4_1, ... (run as stored); Q2_K, Q3_K (dequantized at load)",
/// from [`TYPES`].
pub fn supported_types() -> String {
    let names = |deq: bool| {
        TYPES.iter().filter(|t| matches!(t.4, Handling::Dequantize(_)) == deq).map(|t| t.1).collect::<Vec<_>>().join(", ")
    };
    format!("{} (run as stored); {} (dequantized at load)", names(false), names(true))
}

/// Names of the ggml types we do not load, for error messages.
fn ggml_type_name(id: u32) -> String {
    const OTHER: &[(u32, &str)] = &[
        (9, "Q8_1"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    TYPES
        .iter()
        .map(|t| (t.0, t.1))
        .chain(OTHER.iter().copied())
        .find(|t| t.0 == id)
        .map(|t| t.1.to_string())
        .unwrap_or_else(|| format!("type id {id}"))
}

pub struct TensorInfo {
    /// ggml order: fastest-varying dimension first (HF shape reversed).
    pub dims: Vec<usize>,
    pub ggml_type: u32,
    start: usize,
    end: usize,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, Meta>,
    pub tensors: HashMap<String, TensorInfo>,
    map: Mmap,
}

/// Bounds-checked little-endian reader over the header; running off the end means truncation.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(EngineError::bad_file(
                self.path,
                format!("truncated GGUF file: the header needs more than the file's {} bytes", self.buf.len()),
            )),
        }
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A count or length, refused when it could not possibly fit in the file (corrupt header).
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            return Err(EngineError::bad_file(self.path, format!("corrupt GGUF header: {what} {n} exceeds the file size")));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len("string length")?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| EngineError::bad_file(self.path, "corrupt GGUF header: a string is not UTF-8"))
    }
    fn value(&mut self, ty: u32) -> Result<Meta> {
        Ok(match ty {
            0 => Meta::Int(self.take(1)?[0] as i64),
            1 => Meta::Int(self.take(1)?[0] as i8 as i64),
            2 => Meta::Int(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i64),
            3 => Meta::Int(i16::from_le_bytes(self.take(2)?.try_into().unwrap()) as i64),
            4 => Meta::Int(self.u32()? as i64),
            5 => Meta::Int(self.u32()? as i32 as i64),
            6 => Meta::Float(f32::from_le_bytes(self.take(4)?.try_into().unwrap()) as f64),
            7 => Meta::Bool(self.take(1)?[0] != 0),
            8 => Meta::Str(self.string()?),
            9 => {
                let inner = self.u32()?;
                let n = self.len("array length")?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner)?);
                }
                Meta::Array(v)
            }
            10 => Meta::Int(self.u64()? as i64),
            11 => Meta::Int(self.u64()? as i64),
            12 => Meta::Float(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            t => return Err(EngineError::bad_file(self.path, format!("corrupt GGUF header: unknown metadata value type {t}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e| EngineError::Io { path: path.into(), source: e };
        let file = std::fs::File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::ModelNotFound(format!("{} does not exist", path.display()))
            } else {
                io(e)
            }
        })?;
        // SAFETY: mapped read-only; like any mmap the file must not be truncated while loading.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut c = Cursor { buf: &map, pos: 0, path };
        if c.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(EngineError::bad_file(path, "not a GGUF file (no \"GGUF\" magic)"));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(EngineError::Unsupported(format!("GGUF version {version} in {}; supported: 2, 3", path.display())));
        }
        let n_tensors = c.len("tensor count")?;
        let n_kv = c.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            metadata.insert(key, c.value(ty)?);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > 4 {
                return Err(EngineError::bad_file(path, format!("corrupt GGUF header: tensor \"{name}\" has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| c.len("dimension")).collect::<Result<Vec<_>>>()?;
            let ggml_type = c.u32()?;
            let offset = c.len("tensor offset")?;
            infos.push((name, dims, ggml_type, offset));
        }
        let alignment = metadata.get("general.alignment").and_then(Meta::as_u64).unwrap_or(32).max(1) as usize;
        let data_start = c.pos.next_multiple_of(alignment);
        let mut tensors = HashMap::with_capacity(infos.len());
        for (name, dims, ggml_type, offset) in infos {
            // Unknown types get no size; they are reported when (and if) the model needs them.
            let overflow = || EngineError::bad_file(path, format!("corrupt GGUF header: tensor \"{name}\" has dims {dims:?}"));
            let bytes = type_info(ggml_type).map(|&GgmlType(_, tname, per_block, block_bytes, _)| {
                let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(overflow)?;
                if n % per_block != 0 {
                    Err(EngineError::bad_file(path, format!("tensor \"{name}\": {n} values do not fill whole {tname} blocks")))
                } else {
                    (n / per_block).checked_mul(block_bytes).ok_or_else(overflow)
                }
            });
            let bytes = bytes.transpose()?.unwrap_or(0);
            let end = data_start.checked_add(offset).and_then(|start| start.checked_add(bytes));
            let (start, end) = match end {
                Some(end) if end <= map.len() => (end - bytes, end),
                _ => {
                    let end = end.map_or("beyond 2^64".to_string(), |e| e.to_string());
                    return Err(EngineError::bad_file(
                        path,
                        format!("truncated GGUF file: tensor \"{name}\" needs bytes up to {end}, the file holds {}", map.len()),
                    ));
                }
            };
            tensors.insert(name, TensorInfo { dims, ggml_type, start, end });
        }
        Ok(Self { path: path.into(), metadata, tensors, map })
    }

    pub fn meta(&self, key: &str) -> Option<&Meta> {
        self.metadata.get(key)
    }

    pub fn architecture(&self) -> &str {
        self.meta("general.architecture").and_then(Meta::as_str).unwrap_or("<missing>")
    }

    fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.start..t.end]
    }
}

/// llama.cpp's tensor name for a Hugging Face one.
pub fn gguf_name(hf: &str) -> String {
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
        let (module, kind) = rest.rsplit_once('.').unwrap_or((rest, ""));
        let part = match module {
            "input_layernorm" => "attn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "post_attention_layernorm" => "ffn_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            _ => return format!("blk.{layer}.{rest}"),
        };
        return format!("blk.{layer}.{part}.{kind}");
    }
    match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        other => other.into(),
    }
}

/// Copy fixed-size blocks out of (possibly unaligned) file bytes.
fn blocks<T: Copy>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut out = Vec::<T>::with_capacity(n);
    // SAFETY: T is a plain-old-data block (repr(C), no padding, every bit pattern valid: f16 + ints)
    // and `bytes` holds exactly n of them.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr() as *mut u8, n * std::mem::size_of::<T>());
        out.set_len(n);
    }
    out
}

impl TensorSource for GgufFile {
    fn load_stored(&self, hf_name: &str, shape: &[usize]) -> Result<StoredTensor> {
        let name = gguf_name(hf_name);
        let t = self.tensors.get(&name).ok_or_else(|| {
            EngineError::bad_file(&self.path, format!("required tensor \"{name}\" is missing from the GGUF file"))
        })?;
        let want: Vec<usize> = shape.iter().rev().copied().collect();
        if t.dims != want {
            return Err(EngineError::bad_file(
                &self.path,
                format!("tensor \"{name}\" has ggml dims {:?}, expected {want:?} from the metadata", t.dims),
            ));
        }
        let bytes = self.data(t);
        let numel: usize = shape.iter().product();
        let dense = |v: Vec<f32>| -> Result<StoredTensor> { Ok(StoredTensor::Dense(Tensor::from_vec(v, shape, &Device::Cpu)?)) };
        let (n, k) = (shape[0], numel / shape[0].max(1));
        let unsupported = || {
            EngineError::Unsupported(format!(
                "{}: tensor \"{name}\" has type {}; supported: {}",
                self.path.display(),
                ggml_type_name(t.ggml_type),
                supported_types()
            ))
        };
        let handling = type_info(t.ggml_type).ok_or_else(unsupported)?.4;
        let stored = match handling {
            Handling::Dense(dtype) => StoredTensor::Dense(Tensor::from_raw_buffer(bytes, dtype, shape, &Device::Cpu)?),
            Handling::Q8_0 if shape.len() == 2 => StoredTensor::Q8(Q8Matrix::from_blocks(n, k, blocks::<BlockQ8>(bytes))),
            Handling::Q4_0 if shape.len() == 2 => StoredTensor::Q4(Q4Matrix { n, k, blocks: blocks::<BlockQ4>(bytes) }),
            Handling::Q8_0 => dense(Q8Matrix::from_blocks(1, numel, blocks::<BlockQ8>(bytes)).dequantize())?,
            Handling::Q4_0 => dense(Q4Matrix { n: 1, k: numel, blocks: blocks::<BlockQ4>(bytes) }.dequantize())?,
            // Sizes were checked against the type's blocks when the header was read.
            Handling::Stored(format) if shape.len() == 2 => {
                if k % format.block_values() != 0 {
                    let why = format!("tensor \"{name}\": rows of {k} values do not fill whole {} blocks", ggml_type_name(t.ggml_type));
                    return Err(EngineError::bad_file(&self.path, why));
                }
                StoredTensor::Blocks { format, n, k, bytes: bytes.to_vec() }
            }
            Handling::Stored(format) => {
                let mut v = vec![0f32; numel];
                dequantize_gguf(format, bytes, &mut v);
                dense(v)?
            }
            Handling::Dequantize(f) => {
                let mut v = vec![0f32; numel];
                f(bytes, &mut v);
                dense(v)?
            }
        };
        // Copied out: its mapped pages would otherwise count as this process's memory until the
        // whole file is unmapped (peak RSS = weights + file).
        release_pages(&self.map, t.start, t.end - t.start);
        Ok(stored)
    }

    fn stored_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.end - t.start).sum()
    }

    fn has(&self, hf_name: &str) -> bool {
        self.tensors.contains_key(&gguf_name(hf_name))
    }

    fn stored_format(&self, hf_name: &str) -> Option<String> {
        self.tensors.get(&gguf_name(hf_name)).map(|t| ggml_type_name(t.ggml_type).to_lowercase())
    }
}
