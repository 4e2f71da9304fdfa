// y[m, n_base + row] = x[m, :] . W[row, :] for decode rows. A workgroup takes `rpw` weight rows
// and up to 4 tokens (each weight row read once for all of them); its subgroups share the rows
// out (row j * num_subgroups + subgroup_id), a subgroup's invocations stride over k and
// subgroupAdd sums them. Nothing depends on the subgroup size or on how invocations map to
// subgroups. Without subgroups the host swaps in `sg_add(v) = v` with one "subgroup" per
// invocation (each invocation then sums its rows alone).
struct P {
    m: u32, n: u32, k: u32, x_off: u32,
    x_stride: u32, y_off: u32, y_stride: u32, n_base: u32,
    rpw: u32,
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

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32 /*SG_ARGS*/) {
    /*SG_LETS*/
    let row0 = (wid.x + wid.y * nwg.x) * p.rpw;
    let m0 = wid.z * 4u;
    let tokens = min(p.m - m0, 4u);
    let k4 = p.k / 4u;
    // The same trip count in every invocation, so the subgroup sums stay in uniform control flow.
    for (var j = 0u; j < (p.rpw + nsg - 1u) / nsg; j++) {
        let r = j * nsg + sg_id;
        let row = row0 + r;
        let live = r < p.rpw && row < p.n;
        var a0 = 0.0;
        var a1 = 0.0;
        var a2 = 0.0;
        var a3 = 0.0;
        if (live) {
            for (var c = sg_inv; c < k4; c += sg_size) {
                let wv = wv4(row, c, p.k);
                a0 += dot(wv, xv4(m0, c));
                if (tokens > 1u) { a1 += dot(wv, xv4(m0 + 1u, c)); }
                if (tokens > 2u) { a2 += dot(wv, xv4(m0 + 2u, c)); }
                if (tokens > 3u) { a3 += dot(wv, xv4(m0 + 3u, c)); }
            }
        }
        let s = vec4<f32>(sg_add(a0), sg_add(a1), sg_add(a2), sg_add(a3));
        if (live && sg_inv == 0u) {
            let o = p.y_off + m0 * p.y_stride + p.n_base + row;
            y[o] = s.x;
            if (tokens > 1u) { y[o + p.y_stride] = s.y; }
            if (tokens > 2u) { y[o + 2u * p.y_stride] = s.z; }
            if (tokens > 3u) { y[o + 3u * p.y_stride] = s.w; }
        }
    }
}
