// Qwen3's q/k path in place, per (token, head): RMSNorm over head_dim with `wt` (when
// `use_norm`; Qwen2 has none), then rotary embedding in the rotate-half layout with the cos/sin
// row of the token's position (`cs[pos * half + i]`: a table uploaded once, or per-step rows
// with positions 0..t).
struct P {
    t: u32, heads: u32, hd: u32, x_off: u32,
    x_stride: u32, eps: f32, use_norm: u32, pos_off: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<u32>;
@group(0) @binding(4) var<storage, read> cs: array<f32>;
@group(0) @binding(5) var<storage, read> sn: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let tok = wid.y + wid.z * 65535u;
    if (tok >= p.t) {
        return;
    }
    let half = p.hd / 2u;
    let b = p.x_off + tok * p.x_stride + head * p.hd;
    var s = 1.0;
    if (p.use_norm != 0u) {
        var ss = 0.0;
        for (var c = lid; c < p.hd; c += 64u) {
            ss += x[b + c] * x[b + c];
        }
        s = 1.0 / sqrt(wg_sum(ss, lid) / f32(p.hd) + p.eps);
    }
    let cb = pos[p.pos_off + tok] * half;
    for (var i = lid; i < half; i += 64u) {
        var x1 = x[b + i];
        var x2 = x[b + i + half];
        if (p.use_norm != 0u) {
            x1 = x1 * s * wt[i];
            x2 = x2 * s * wt[i + half];
        }
        let c = cs[cb + i];
        let sv = sn[cb + i];
        x[b + i] = x1 * c - x2 * sv;
        x[b + i + half] = x2 * c + x1 * sv;
    }
}
