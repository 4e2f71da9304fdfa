//! What a step costs the device: one submit per run, and a warm step (same tensors, same batch
//! shape) creates no buffers and no bind groups. Plus adapter selection's typed errors.
mod common;
use common::{ctx, rand, seed};
use nano_qwen3_gpu::*;

/// A small decode-shaped step: embedding, norm, matvec, q/k rope, KV write, attention, argmax.
fn record(ctx: &GpuContext, step: &mut Step, t: &Tensors, token: u32, pos: usize) {
    let table = [2u32, 0];
    step.set_batch(&[SeqSpan { start: pos, len: 1, table: &table }]).unwrap();
    step.embedding(&t.embed, &[token], t.x.view()).unwrap();
    step.rms_norm(t.x.view(), &t.norm, 1e-6, t.xn.view(), 1).unwrap();
    step.matmul(t.xn.view(), &t.wqkv, t.qkv.view(), 1).unwrap();
    step.head_norm_rope(t.qkv.view(), 2, 32, Some((&t.qn, 1e-6)), &t.cos, &t.sin).unwrap();
    step.kv_write(t.qkv.cols_from(64), t.qkv.cols_from(96), &t.kv).unwrap();
    step.attention(t.qkv.view(), &t.kv, 2, t.attn.view()).unwrap();
    step.matmul(t.attn.view(), &t.embed, t.logits.view(), 1).unwrap();
    step.argmax(t.logits.view(), 1, 64, &t.next, 0).unwrap();
    let _ = ctx;
}

struct Tensors {
    embed: GpuTensor,
    norm: GpuTensor,
    wqkv: GpuTensor,
    qn: GpuTensor,
    cos: GpuTensor,
    sin: GpuTensor,
    kv: KvLayer,
    x: GpuTensor,
    xn: GpuTensor,
    qkv: GpuTensor,
    attn: GpuTensor,
    logits: GpuTensor,
    next: GpuTensor,
}

#[test]
fn warm_step_creates_nothing_and_submits_once() {
    if ctx().is_none() {
        return;
    }
    // A context of its own: the counters are not disturbed by tests running beside this one.
    let ctx = &GpuContext::new(DeviceRequest::Any(None)).unwrap();
    let s = seed() ^ 77;
    let t = Tensors {
        embed: ctx.upload_f32(64, 64, &rand(64 * 64, s)).unwrap(),
        norm: ctx.upload_f32(1, 64, &rand(64, s + 1)).unwrap(),
        wqkv: ctx.upload_f32(128, 64, &rand(128 * 64, s + 2)).unwrap(),
        qn: ctx.upload_f32(1, 32, &rand(32, s + 3)).unwrap(),
        cos: ctx.upload_f32(32, 16, &rand(32 * 16, s + 4)).unwrap(),
        sin: ctx.upload_f32(32, 16, &rand(32 * 16, s + 5)).unwrap(),
        kv: ctx.kv_layer(KvDtype::F16, 3, 1, 32).unwrap(),
        x: ctx.zeros(DType::F32, 1, 64).unwrap(),
        xn: ctx.zeros(DType::F32, 1, 64).unwrap(),
        qkv: ctx.zeros(DType::F32, 1, 128).unwrap(),
        attn: ctx.zeros(DType::F32, 1, 64).unwrap(),
        logits: ctx.zeros(DType::F32, 1, 64).unwrap(),
        next: ctx.zeros(DType::U32, 1, 1).unwrap(),
    };
    let mut before = ctx.counters();
    for pos in 0..4 {
        let mut step = ctx.step();
        record(ctx, &mut step, &t, pos as u32 + 1, pos);
        let dispatches = step.dispatch_count();
        step.time_gpu();
        let h = step.read_u32(&t.next, 0, 1).unwrap();
        let out = ctx.run(step).unwrap();
        assert!(out.u32(h)[0] < 64);
        if ctx.report().uses("timestamp-query") {
            let ns = out.gpu_ns.expect("a timed step on an adapter with timestamps");
            assert!(ns > 0.0 && ns < 60e9, "GPU time {ns} ns");
        }
        let after = ctx.counters();
        assert_eq!(after.submits - before.submits, 1, "one submit per step");
        assert_eq!(after.dispatches - before.dispatches, dispatches as u64);
        if pos > 0 {
            assert_eq!(after.buffers_created, before.buffers_created, "warm step {pos} created GPU buffers");
            assert_eq!(after.bind_groups_created, before.bind_groups_created, "warm step {pos} created bind groups");
        }
        before = after;
    }
    // Dropped tensors take their cached bind groups with them at the next run, and their bytes
    // leave the live count (the tensors' padded sizes, every part).
    let cached = ctx.cached_bind_groups();
    assert!(cached > 0);
    let live = ctx.counters().live_bytes;
    let kv = t.kv.k.bytes() as u64 * 2;
    drop(t);
    ctx.run(ctx.step()).unwrap();
    assert_eq!(ctx.cached_bind_groups(), 0, "bind groups of dropped tensors stay cached");
    let freed = live - ctx.counters().live_bytes;
    assert!(freed >= kv + 64 * 64 * 4 + 128 * 64 * 4, "freed {freed} bytes");
    // What is left: the step arenas only (params, data, scratch, staging, timestamps).
    let arenas = ctx.counters().live_bytes;
    assert!(arenas < 1 << 20, "{arenas} bytes left after dropping every tensor");
}

#[test]
fn adapter_requests_and_errors() {
    let Some(ctx) = ctx() else { return };
    let all = list_adapters();
    assert!(!all.is_empty());
    // 'gpu:N' past the list names what exists.
    match GpuContext::new(DeviceRequest::Any(Some(all.len()))) {
        Err(GpuError::BadAdapterIndex { index, found }) => {
            assert_eq!(index, all.len());
            assert_eq!(found.len(), all.len());
        }
        other => panic!("expected BadAdapterIndex, got {:?}", other.map(|c| c.report().clone())),
    }
    // 'auto' never takes a software adapter: where there are only software ones, it says so.
    let auto = GpuContext::new(DeviceRequest::Auto);
    if all.iter().all(|a| a.software) {
        match auto {
            Err(GpuError::NoAdapter { found, .. }) => assert!(found.iter().all(|f| f.contains("software")), "{found:?}"),
            other => panic!("auto took a software adapter: {:?}", other.map(|c| c.report().clone())),
        }
    } else {
        assert!(!auto.unwrap().report().software);
    }
    let r = ctx.report();
    if r.backend == "vulkan" {
        assert_eq!(GpuContext::new(DeviceRequest::Backend(GpuBackend::Vulkan)).unwrap().report().backend, "vulkan");
    }
    assert!(r.max_storage_binding > 0 && r.max_buffer_size >= r.max_storage_binding);
    if r.uses("subgroups") {
        assert!(r.subgroup_min_size >= 1 && r.subgroup_min_size <= r.subgroup_max_size);
    }
}
