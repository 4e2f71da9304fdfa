// Elements i (even) and i + 1 as one word, so no two invocations write the same word.
fn put2(is_v: bool, i: u32, a: f32, b: f32) {
    let wd = pack2x16float(vec2<f32>(a, b));
    if (is_v) { vc[i >> 1u] = wd; } else { kc[i >> 1u] = wd; }
}
