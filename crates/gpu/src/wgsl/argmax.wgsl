// out[i] = the index of row i's largest value (the lowest index among equals; NaN never wins).
struct P {
    rows: u32, n: u32, x_off: u32, x_stride: u32, o_off: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> bv: array<f32, 64>;
var<workgroup> bi: array<u32, 64>;

fn better(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    var best = bitcast<f32>(0xff800000u); // -inf: an all -inf row gives 0
    var at = 0xffffffffu;
    let b = p.x_off + row * p.x_stride;
    for (var c = lid; c < p.n; c += 64u) {
        let v = x[b + c];
        if (better(v, c, best, at)) {
            best = v;
            at = c;
        }
    }
    bv[lid] = best;
    bi[lid] = at;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s && better(bv[lid + s], bi[lid + s], bv[lid], bi[lid])) {
            bv[lid] = bv[lid + s];
            bi[lid] = bi[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[p.o_off + row] = min(bi[0], p.n - 1u);
    }
}
