// The gate/up matmul of decode rows with SwiGLU in its epilogue: W stacks gate rows 0..inter
// and up rows inter..2 inter; out[m, j] = silu(x[m] . W[j]) * (x[m] . W[inter + j]). The
// workgroup and subgroup layout is matvec.wgsl's (rows shared out by subgroup, nothing assumed
// about the subgroup size); the gate/up rows never reach memory.
struct P {
    m: u32, inter: u32, k: u32, x_off: u32,
    x_stride: u32, y_off: u32, y_stride: u32, rpw: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;

fn xv4(t: u32, c: u32) -> vec4<f32> {
    let b = p.x_off + t * p.x_stride + c * 4u;
    return vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
}

fn silu_mul(g: f32, u: f32) -> f32 {
    return g / (1.0 + exp(-g)) * u;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32 /*SG_ARGS*/) {
    /*SG_LETS*/
    let row0 = (wid.x + wid.y * nwg.x) * p.rpw;
    let m0 = wid.z * 4u;
    let tokens = min(p.m - m0, 4u);
    let k4 = p.k / 4u;
    for (var j = 0u; j < (p.rpw + nsg - 1u) / nsg; j++) {
        let r = j * nsg + sg_id;
        let row = row0 + r;
        let live = r < p.rpw && row < p.inter;
        var g = vec4<f32>(0.0);
        var u = vec4<f32>(0.0);
        if (live) {
            for (var c = sg_inv; c < k4; c += sg_size) {
                let wg = wv4(row, c, p.k);
                let wu = wv4(p.inter + row, c, p.k);
                for (var t = 0u; t < tokens; t++) {
                    let xv = xv4(m0 + t, c);
                    g[t] += dot(wg, xv);
                    u[t] += dot(wu, xv);
                }
            }
        }
        let gs = vec4<f32>(sg_add(g.x), sg_add(g.y), sg_add(g.z), sg_add(g.w));
        let us = vec4<f32>(sg_add(u.x), sg_add(u.y), sg_add(u.z), sg_add(u.w));
        if (live && sg_inv == 0u) {
            for (var t = 0u; t < tokens; t++) {
                y[p.y_off + (m0 + t) * p.y_stride + row] = silu_mul(gs[t], us[t]);
            }
        }
    }
}
