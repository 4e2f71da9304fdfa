// y[m, n_base + n] = x[m, :] . W[n, :] for prefill chunks: 32 x 32 output tiles, 16 x 16
// threads with 2 x 2 outputs each, K in steps of 16 staged in workgroup memory (weights
// dequantised once per tile on the way in). f32 accumulation.
struct P {
    m: u32, n: u32, k: u32, x_off: u32,
    x_stride: u32, y_off: u32, y_stride: u32, n_base: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> xs: array<vec4<f32>, 128>; // [32 rows][4 vec4]
var<workgroup> ws: array<vec4<f32>, 128>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let tn = wid.x * 32u;
    let tm = wid.y * 32u;
    let k4n = p.k / 4u;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    let e = lid % 128u;
    let r = e / 4u;
    let c = e % 4u;
    for (var kt = 0u; kt < k4n; kt += 4u) {
        if (lid < 128u) {
            var v = vec4<f32>(0.0);
            if (tm + r < p.m && kt + c < k4n) {
                let b = p.x_off + (tm + r) * p.x_stride + (kt + c) * 4u;
                v = vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
            }
            xs[e] = v;
        } else {
            var v = vec4<f32>(0.0);
            if (tn + r < p.n && kt + c < k4n) {
                v = wv4(tn + r, kt + c, p.k);
            }
            ws[e] = v;
        }
        workgroupBarrier();
        for (var cc = 0u; cc < 4u; cc++) {
            for (var i = 0u; i < 2u; i++) {
                let xv = xs[(l.y + 16u * i) * 4u + cc];
                for (var j = 0u; j < 2u; j++) {
                    acc[i * 2u + j] += dot(xv, ws[(l.x + 16u * j) * 4u + cc]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 2u; i++) {
        for (var j = 0u; j < 2u; j++) {
            let mi = tm + l.y + 16u * i;
            let nj = tn + l.x + 16u * j;
            if (mi < p.m && nj < p.n) {
                y[p.y_off + mi * p.y_stride + p.n_base + nj] = acc[i * 2u + j];
            }
        }
    }
}
