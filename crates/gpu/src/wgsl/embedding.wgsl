// out[t, :] = table[ids[t], :] widened to f32, for the ids that fall in this part of the table
// (rows first_row .. first_row + n); one dispatch per part. Any weight format (tied quantized
// embeddings included).
struct P {
    t: u32, n: u32, k: u32, ids_off: u32,
    out_off: u32, out_stride: u32, first_row: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    let t = g.y + g.z * 65535u;
    if (c >= p.k / 4u || t >= p.t) {
        return;
    }
    let id = ids[p.ids_off + t];
    if (id < p.first_row || id >= p.first_row + p.n) {
        return;
    }
    let v = wv4(id - p.first_row, c, p.k);
    let o = p.out_off + t * p.out_stride + c * 4u;
    out[o] = v.x;
    out[o + 1u] = v.y;
    out[o + 2u] = v.z;
    out[o + 3u] = v.w;
}
