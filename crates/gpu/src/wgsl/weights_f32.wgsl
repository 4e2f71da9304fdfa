// f32 weights: elements 4*k4 .. 4*k4+4 of `row` (k % 4 == 0).
fn wv4(row: u32, k4: u32, k: u32) -> vec4<f32> {
    let i = row * k + k4 * 4u;
    return vec4<f32>(bitcast<f32>(w[i]), bitcast<f32>(w[i + 1u]), bitcast<f32>(w[i + 2u]), bitcast<f32>(w[i + 3u]));
}
