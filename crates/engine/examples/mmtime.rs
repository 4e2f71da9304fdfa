use candle_core::{Device, Tensor, DType};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (151936, 32), &d)?;
    let h = Tensor::randn(0f32, 1.0, (1, 32), &d)?;
    for name in ["h@w.t", "w@h.t", "bf16"] {
        let t = Instant::now();
        for _ in 0..20 {
            let _ = match name { "h@w.t" => h.matmul(&w.t()?)?, "w@h.t" => w.matmul(&h.t()?)?, _ => h.to_dtype(DType::BF16)?.matmul(&w.to_dtype(DType::BF16)?.t()?)? };
        }
        println!("{name}: {:?}", t.elapsed() / 20);
    }
    let w2 = Tensor::randn(0f32, 1.0, (3072, 1024), &d)?;
    let h2 = Tensor::randn(0f32, 1.0, (1, 1024), &d)?;
    let t = Instant::now();
    for _ in 0..20 { let _ = h2.matmul(&w2.t()?)?; }
    println!("1x1024 @ 1024x3072: {:?}", t.elapsed() / 20);
    let t = Instant::now();
    for _ in 0..20 { let _ = w2.matmul(&h2.t()?)?; }
    println!("3072x1024 @ 1024x1: {:?}", t.elapsed() / 20);
    Ok(())
}
