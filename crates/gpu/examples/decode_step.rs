//! Structural figures of a decode step with Qwen3-0.6B's shapes (28 layers, hidden 1024, ffn
//! 3072, 16 / 8 heads of 128, vocab 151,936, tied embeddings) on random weights: dispatches and
//! submits per step, bytes read back, CPU time to record a step, wall and GPU time per step.
//! Speed depends on shapes, not values; on lavapipe it is not GPU speed.
//!
//! `cargo run --release -p nano-qwen3-gpu --example decode_step -- [f32|f16|bf16|q8_0|q4_0] [steps] [layers] [gpu index]`
//! (NANO_QWEN3_UNFUSED=1: SwiGLU as its own dispatch.)
use nano_qwen3_gpu::*;
use std::time::Instant;

const H: usize = 1024;
const FFN: usize = 3072;
const HEADS: usize = 16;
const KV_HEADS: usize = 8;
const HD: usize = 128;
const VOCAB: usize = 151_936;

/// Random bytes of a `[n, k]` weight in `d` with small values (block scales kept small).
fn weight(ctx: &GpuContext, d: DType, n: usize, k: usize, seed: &mut u64) -> Result<GpuTensor> {
    let mut bytes = vec![0u8; n * d.row_bytes(k)];
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    match d {
        DType::F32 => bytes.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&((next() >> 40) as f32 / (1u64 << 24) as f32 * 0.1 - 0.05).to_le_bytes())),
        DType::F16 => bytes.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&half::f16::from_f32((next() >> 40) as f32 / (1u64 << 24) as f32 * 0.1 - 0.05).to_le_bytes())),
        DType::Bf16 => bytes.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&half::bf16::from_f32((next() >> 40) as f32 / (1u64 << 24) as f32 * 0.1 - 0.05).to_le_bytes())),
        DType::Q8_0 | DType::Q4_0 => {
            let bs = if d == DType::Q8_0 { 34 } else { 18 };
            for b in bytes.chunks_exact_mut(bs) {
                b[2..].iter_mut().for_each(|x| *x = next() as u8);
                b[..2].copy_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
            }
        }
        DType::U32 => unreachable!(),
    }
    ctx.upload(d, n, k, &bytes)
}

struct Layer {
    in_norm: GpuTensor,
    post_norm: GpuTensor,
    q_norm: GpuTensor,
    k_norm: GpuTensor,
    qkv: GpuTensor,
    o: GpuTensor,
    gate_up: GpuTensor,
    down: GpuTensor,
    kv: KvLayer,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let format = match args.get(1).map(String::as_str).unwrap_or("f16") {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::Bf16,
        "q8_0" => DType::Q8_0,
        "q4_0" => DType::Q4_0,
        other => panic!("format {other}: one of f32, f16, bf16, q8_0, q4_0"),
    };
    let steps: usize = args.get(2).map_or(5, |s| s.parse().unwrap());
    let layers: usize = args.get(3).map_or(28, |s| s.parse().unwrap());
    let gpu: Option<usize> = args.get(4).map(|s| s.parse().unwrap());
    // NANO_QWEN3_UNFUSED=1: gate/up matmul and SwiGLU as two dispatches.
    let fused = std::env::var("NANO_QWEN3_UNFUSED").is_err();
    let ctx = GpuContext::new(DeviceRequest::Any(gpu))?;
    let r = ctx.report();
    println!("adapter: {} ({}, {}, {} {}), software: {}, features {:?}, subgroups {}..{}", r.name, r.backend, r.device_type, r.driver, r.driver_info, r.software, r.features, r.subgroup_min_size, r.subgroup_max_size);
    let t0 = Instant::now();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let ones = |n: usize| ctx.upload_f32(1, n, &vec![1.0; n]);
    let (nq, nkv) = (HEADS * HD, KV_HEADS * HD);
    let max_pos = 4096;
    let blocks = max_pos / BLOCK_TOKENS;
    let mut ls = Vec::new();
    for _ in 0..layers {
        ls.push(Layer {
            in_norm: ones(H)?,
            post_norm: ones(H)?,
            q_norm: ones(HD)?,
            k_norm: ones(HD)?,
            qkv: weight(&ctx, format, nq + 2 * nkv, H, &mut seed)?,
            o: weight(&ctx, format, H, nq, &mut seed)?,
            gate_up: weight(&ctx, format, 2 * FFN, H, &mut seed)?,
            down: weight(&ctx, format, H, FFN, &mut seed)?,
            kv: ctx.kv_layer(KvDtype::F16, blocks, KV_HEADS, HD)?,
        });
    }
    let embed = weight(&ctx, format, VOCAB, H, &mut seed)?;
    let final_norm = ones(H)?;
    let half = HD / 2;
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / 1_000_000f32.powf(2.0 * i as f32 / HD as f32)).collect();
    let cos: Vec<f32> = (0..max_pos).flat_map(|p| inv.iter().map(move |f| (p as f32 * f).cos())).collect();
    let sin: Vec<f32> = (0..max_pos).flat_map(|p| inv.iter().map(move |f| (p as f32 * f).sin())).collect();
    let (cos, sin) = (ctx.upload_f32(max_pos, half, &cos)?, ctx.upload_f32(max_pos, half, &sin)?);
    let act = |w: usize| ctx.zeros(DType::F32, 1, w);
    let (x, xn, qkv, attn, o, gu, mlp, down) = (act(H)?, act(H)?, act(nq + 2 * nkv)?, act(nq)?, act(H)?, act(2 * FFN)?, act(FFN)?, act(H)?);
    let (sel, logits, next) = (act(H)?, act(VOCAB)?, ctx.zeros(DType::U32, 1, 1)?);
    println!("weights {format:?}: {} layers uploaded in {:.1} s; embedding in {} part(s)", layers, t0.elapsed().as_secs_f64(), embed.parts.len());
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut token = 1u32;
    for pos in 0..steps {
        let before = ctx.counters();
        let rec = Instant::now();
        let mut step = ctx.step();
        step.time_gpu();
        step.set_batch(&[SeqSpan { start: pos, len: 1, table: &table }])?;
        step.embedding(&embed, &[token], x.view())?;
        for (i, l) in ls.iter().enumerate() {
            if i == 0 {
                step.rms_norm(x.view(), &l.in_norm, 1e-6, xn.view(), 1)?;
            } else {
                step.add_rms_norm(x.view(), down.view(), &l.in_norm, 1e-6, xn.view(), 1)?;
            }
            step.matmul(xn.view(), &l.qkv, qkv.view(), 1)?;
            step.head_norm_rope(qkv.view(), HEADS, HD, Some((&l.q_norm, 1e-6)), &cos, &sin)?;
            step.head_norm_rope(qkv.cols_from(nq), KV_HEADS, HD, Some((&l.k_norm, 1e-6)), &cos, &sin)?;
            step.kv_write(qkv.cols_from(nq), qkv.cols_from(nq + nkv), &l.kv)?;
            step.attention(qkv.view(), &l.kv, HEADS, attn.view())?;
            step.matmul(attn.view(), &l.o, o.view(), 1)?;
            step.add_rms_norm(x.view(), o.view(), &l.post_norm, 1e-6, xn.view(), 1)?;
            if fused {
                step.matmul_swiglu(xn.view(), &l.gate_up, mlp.view(), 1)?;
            } else {
                step.matmul(xn.view(), &l.gate_up, gu.view(), 1)?;
                step.swiglu(gu.view(), gu.cols_from(FFN), mlp.view(), 1, FFN)?;
            }
            step.matmul(mlp.view(), &l.down, down.view(), 1)?;
        }
        step.add(x.view(), down.view(), 1, H)?;
        step.rms_norm_rows(x.view(), &[0], &final_norm, 1e-6, sel.view())?;
        step.matmul(sel.view(), &embed, logits.view(), 1)?;
        step.argmax(logits.view(), 1, VOCAB, &next, 0)?;
        let h = step.read_u32(&next, 0, 1)?;
        let dispatches = step.dispatch_count();
        let record_us = rec.elapsed().as_secs_f64() * 1e6;
        let out = ctx.run(step)?;
        let wall_ms = rec.elapsed().as_secs_f64() * 1e3;
        token = out.u32(h)[0];
        let after = ctx.counters();
        println!(
            "step {pos}: token {token}; {dispatches} dispatches, {} submit(s), 4 bytes read back, recorded in {record_us:.0} us + encoded in {:.0} us (CPU), {wall_ms:.1} ms wall, GPU {}; created {} buffer(s), {} bind group(s)",
            after.submits - before.submits,
            out.encode_ns as f64 / 1e3,
            out.gpu_ns.map_or("n/a".into(), |n| format!("{:.1} ms", n / 1e6)),
            after.buffers_created - before.buffers_created,
            after.bind_groups_created - before.bind_groups_created,
        );
    }
    Ok(())
}
