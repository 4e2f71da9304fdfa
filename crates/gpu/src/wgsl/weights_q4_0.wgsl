// GGML Q4_0 as stored: per 32 values, f16 d then 16 bytes; value i < 16 is the low nibble of
// byte i, value i + 16 the high nibble of byte i; x = (q - 8) * d. k % 32 == 0.
fn wv4(row: u32, k4: u32, k: u32) -> vec4<f32> {
    let o = (row * (k / 32u) + k4 / 8u) * 18u;
    let i = (k4 % 8u) * 4u;
    let q = word_at(o + 2u + i % 16u) >> select(0u, 4u, i >= 16u);
    let n = (vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u);
    return (vec4<f32>(n) - 8.0) * half_at(o);
}
