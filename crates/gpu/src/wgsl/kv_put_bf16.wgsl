// f32 -> bf16 rounding to nearest even (as half::bf16::from_f32; NaN stays NaN).
fn to_bf(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (u >> 16u) | 0x40u;
    }
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

fn put2(is_v: bool, i: u32, a: f32, b: f32) {
    let wd = to_bf(a) | (to_bf(b) << 16u);
    if (is_v) { vc[i >> 1u] = wd; } else { kc[i >> 1u] = wd; }
}
