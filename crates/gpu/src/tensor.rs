//! GPU tensors: a `[rows, cols]` matrix (a vector is one row) in one element format, stored as one
//! or more buffers of whole rows. A matrix bigger than one storage binding (the 151,936 x 1,024
//! embedding of Qwen3-0.6B is 311 MB in f16; lavapipe binds 128 MiB) is split into parts of
//! consecutive rows; the matmul and embedding ops run once per part.

/// Element formats. The quantized ones are GGML's block layouts byte for byte (the engine's int8
/// weights are Q8_0 blocks, its int4 groups are Q4_0 blocks with the group's scale repeated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
    /// 34-byte blocks of 32 values: f16 scale `d`, 32 x i8; `x = q * d`.
    Q8_0,
    /// 18-byte blocks of 32 values: f16 scale `d`, 16 bytes of nibbles (value i in the low nibble
    /// of byte i, value i + 16 in the high one); `x = (q - 8) * d`.
    Q4_0,
    /// Token ids, positions, argmax results.
    U32,
}

impl DType {
    /// Bytes of a row of `cols` elements (`cols` a multiple of 32 for the block formats).
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            DType::F32 | DType::U32 => 4 * cols,
            DType::F16 | DType::Bf16 => 2 * cols,
            DType::Q8_0 => cols / 32 * 34,
            DType::Q4_0 => cols / 32 * 18,
        }
    }

    pub fn is_block(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_0)
    }

    /// A weight format the matmul / embedding kernels read.
    pub fn is_weight(self) -> bool {
        !matches!(self, DType::U32)
    }
}

/// One buffer of a tensor: rows `first_row .. first_row + rows`.
#[derive(Debug, Clone)]
pub struct Part {
    pub buffer: wgpu::Buffer,
    /// Never reused within a process: the bind-group cache's key.
    pub id: u64,
    pub first_row: usize,
    pub rows: usize,
    pub(crate) _guard: std::sync::Arc<PartGuard>,
}

/// Reports a part's id when its last clone is dropped, so the context's bind-group cache lets go
/// of the buffer (otherwise a cached bind group would keep freed weights in GPU memory).
#[derive(Debug)]
pub(crate) struct PartGuard {
    pub id: u64,
    pub bytes: u64,
    pub dead: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    pub live: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        self.live.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut d) = self.dead.lock() {
            d.push(self.id);
        }
    }
}

/// A tensor in GPU memory. Cheap to clone (the buffers are reference counted).
#[derive(Debug, Clone)]
pub struct GpuTensor {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub parts: Vec<Part>,
}

impl GpuTensor {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the data (without the padding of each part to 4 bytes).
    pub fn bytes(&self) -> usize {
        self.rows * self.dtype.row_bytes(self.cols)
    }

    /// The whole tensor as rows of `cols` (offset 0, stride `cols`).
    pub fn view(&self) -> View<'_> {
        View { t: self, offset: 0, stride: self.cols }
    }

    /// Columns from `col` on, with the tensor's row stride: q, k and v out of one fused qkv row.
    pub fn cols_from(&self, col: usize) -> View<'_> {
        View { t: self, offset: col, stride: self.cols }
    }

    /// The single buffer of an unsplit tensor.
    pub(crate) fn single(&self) -> &Part {
        &self.parts[0]
    }
}

/// Rows of an f32 activation tensor: row `i` starts at element `offset + i * stride`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub t: &'a GpuTensor,
    pub offset: usize,
    pub stride: usize,
}

/// Rows per part so that each part (padded to 4 bytes) fits `limit` bytes.
pub(crate) fn rows_per_part(row_bytes: usize, limit: u64) -> usize {
    let usable = (limit as usize) & !3;
    if row_bytes == 0 {
        return usize::MAX;
    }
    let mut r = usable / row_bytes;
    while r > 0 && (r * row_bytes).div_ceil(4) * 4 > usable {
        r -= 1;
    }
    r
}
