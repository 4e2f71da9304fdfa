//! GPU time of one matmul (lm_head shapes): `op_cost [n] [k] [m] [matvec|tiled] [format]`.
use nano_qwen3_gpu::*;

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| a.get(i).map_or(d, |s| s.parse().unwrap());
    let (n, k, m) = (arg(1, 151_936), arg(2, 32), arg(3, 1));
    let kind = if a.get(4).map(String::as_str) == Some("tiled") { MatmulKind::Tiled } else { MatmulKind::MatVec };
    let ctx = GpuContext::new(DeviceRequest::Any(None))?;
    let w = ctx.upload(DType::F16, n, k, &vec![0u8; n * k * 2])?;
    let x = ctx.zeros(DType::F32, m, k)?;
    let y = ctx.zeros(DType::F32, m, n)?;
    for _ in 0..3 {
        let mut step = ctx.step();
        step.time_gpu();
        step.matmul_with(kind, x.view(), &w, y.view(), m)?;
        let out = ctx.run(step)?;
        println!("{kind:?} n={n} k={k} m={m}: GPU {:.2} ms", out.gpu_ns.unwrap_or(0.0) / 1e6);
    }
    Ok(())
}
