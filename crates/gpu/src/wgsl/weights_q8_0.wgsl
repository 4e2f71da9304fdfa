// GGML Q8_0 as stored: per 32 values, f16 d then 32 x i8; x = q * d. k % 32 == 0.
fn wv4(row: u32, k4: u32, k: u32) -> vec4<f32> {
    let o = (row * (k / 32u) + k4 / 8u) * 34u;
    let q = bitcast<i32>(word_at(o + 2u + (k4 % 8u) * 4u));
    // Sign-extend each byte: shift it to the top, then arithmetic shift down.
    let v = vec4<i32>(q << 24u, q << 16u, q << 8u, q) >> vec4<u32>(24u);
    return vec4<f32>(v) * half_at(o);
}
