// bf16 weights as stored: a bf16 is the high half of an f32, so widening is a shift.
fn bf2(v: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}

fn wv4(row: u32, k4: u32, k: u32) -> vec4<f32> {
    let i = (row * k + k4 * 4u) / 2u;
    return vec4<f32>(bf2(w[i]), bf2(w[i + 1u]));
}
