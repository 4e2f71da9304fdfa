//! Quantization work that needs the model: calibration statistics (through the forward pass's
//! observer), SmoothQuant and static int8 scales, activation importances for int4.
pub mod calibration;
pub mod static_int8;
