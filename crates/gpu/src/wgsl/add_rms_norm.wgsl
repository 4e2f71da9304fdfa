// The residual add and the next RMSNorm in one pass per row: x += r; out = x / rms(x) * w.
struct P {
    rows: u32, h: u32, x_off: u32, x_stride: u32,
    o_off: u32, o_stride: u32, eps: f32, r_off: u32,
    r_stride: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> res: array<f32>;
@group(0) @binding(3) var<storage, read> wt: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= p.rows) {
        return;
    }
    let xb = p.x_off + i * p.x_stride;
    let rb = p.r_off + i * p.r_stride;
    var ss = 0.0;
    for (var c = lid; c < p.h; c += 64u) {
        let v = x[xb + c] + res[rb + c];
        x[xb + c] = v;
        ss += v * v;
    }
    let s = 1.0 / sqrt(wg_sum(ss, lid) / f32(p.h) + p.eps);
    let ob = p.o_off + i * p.o_stride;
    for (var c = lid; c < p.h; c += 64u) {
        out[ob + c] = x[xb + c] * s * wt[c];
    }
}
