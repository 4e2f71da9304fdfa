//! Quantization work that needs the model: calibration statistics (through the forward pass's
//! observer), per-channel smoothing (SmoothQuant for static int8, activation-aware scaling for
//! int4), static int8 scales, activation-aware int4.
pub mod calibration;
pub mod int4;
pub mod smoothing;
pub mod static_int8;
