// y[m, n_base + row] = x[m, :] . W[row, :] for decode rows: one workgroup per weight row (read
// once for up to MT tokens), threads stride over k, partial sums reduced with subgroupAdd and one
// slot per subgroup (indexed by subgroup_id: no subgroup size is assumed). Without subgroups the
// host swaps in `sg_add(v) = v` with one "subgroup" per invocation.
struct P {
    m: u32, n: u32, k: u32, x_off: u32,
    x_stride: u32, y_off: u32, y_stride: u32, n_base: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
const MT: u32 = 4u;
var<workgroup> red: array<f32, 256>; // [MT][WG]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32 /*SG_ARGS*/) {
    /*SG_LETS*/
    let row = wid.x + wid.y * nwg.x;
    let m0 = wid.z * MT;
    let live = row < p.n;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    if (live) {
        for (var c = lid; c < p.k / 4u; c += WG) {
            let wv = wv4(row, c, p.k);
            for (var t = 0u; t < MT; t++) {
                if (m0 + t < p.m) {
                    let b = p.x_off + (m0 + t) * p.x_stride + c * 4u;
                    acc[t] += dot(wv, vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]));
                }
            }
        }
    }
    for (var t = 0u; t < MT; t++) {
        let s = sg_add(acc[t]);
        if (sg_inv == 0u) {
            red[t * WG + sg_id] = s;
        }
    }
    workgroupBarrier();
    if (live && lid < MT && m0 + lid < p.m) {
        var s = 0.0;
        for (var i = 0u; i < nsg; i++) {
            s += red[lid * WG + i];
        }
        y[p.y_off + (m0 + lid) * p.y_stride + p.n_base + row] = s;
    }
}
