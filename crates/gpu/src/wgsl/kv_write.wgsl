// New tokens' K and V rows into the paged pool: token t goes to slot s = slots[t] (physical
// block s / 16, row s % 16); a block is [kv_heads][16][head_dim]. One invocation per pair of
// elements (whole words for the 16-bit pools).
struct P {
    t: u32, kvh: u32, hd: u32, k_off: u32,
    k_stride: u32, v_off: u32, v_stride: u32, slot_off: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(3) var<storage, read> ks: array<f32>;
@group(0) @binding(4) var<storage, read> vs: array<f32>;
@group(0) @binding(5) var<storage, read> slots: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let pairs = p.kvh * p.hd / 2u;
    let e = g.x;
    let tok = g.y + g.z * 65535u;
    if (e >= pairs || tok >= p.t) {
        return;
    }
    let kh = (e * 2u) / p.hd;
    let d = (e * 2u) % p.hd;
    let s = slots[p.slot_off + tok];
    let dst = ((s / 16u) * p.kvh + kh) * 16u * p.hd + (s % 16u) * p.hd + d;
    let kb = p.k_off + tok * p.k_stride + kh * p.hd + d;
    let vb = p.v_off + tok * p.v_stride + kh * p.hd + d;
    put2(false, dst, ks[kb], ks[kb + 1u]);
    put2(true, dst, vs[vb], vs[vb + 1u]);
}
