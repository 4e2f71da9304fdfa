// Combines attention's split-KV partials (m, l, acc) of one row: M = max m_s,
// out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M), splits in order (empty ones add 0).
struct P {
    hd: u32, kvh: u32, group: u32, splits: u32,
    o_off: u32, o_stride: u32, tiles_off: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> data: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const RMAX: u32 = 16u;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = wid.x;
    let kh = wid.y;
    let r = wid.z;
    let t0 = data[p.tiles_off + 2u * tile];
    let nt = data[p.tiles_off + 2u * tile + 1u];
    if (r >= nt * p.group) {
        return;
    }
    let neg_inf = bitcast<f32>(0xff800000u);
    let rs = RMAX * (p.hd + 2u);
    let b0 = ((tile * p.kvh + kh) * p.splits * RMAX + r) * (p.hd + 2u);
    var mm = neg_inf;
    for (var s = 0u; s < p.splits; s++) {
        mm = max(mm, part[b0 + s * rs]);
    }
    var l = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let ms = part[b0 + s * rs];
        if (ms != neg_inf) {
            l += part[b0 + s * rs + 1u] * exp(ms - mm);
        }
    }
    let tok = t0 + r / p.group;
    let h = kh * p.group + r % p.group;
    for (var d = lid; d < p.hd; d += 64u) {
        var a = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            let ms = part[b0 + s * rs];
            if (ms != neg_inf) {
                a += part[b0 + s * rs + 2u + d] * exp(ms - mm);
            }
        }
        out[p.o_off + tok * p.o_stride + h * p.hd + d] = select(0.0, a / l, l > 0.0);
    }
}
