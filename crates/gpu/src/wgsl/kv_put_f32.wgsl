fn put2(is_v: bool, i: u32, a: f32, b: f32) {
    if (is_v) { vc[i] = a; vc[i + 1u] = b; } else { kc[i] = a; kc[i + 1u] = b; }
}
