// f16 weights read as u32 pairs (no shader-f16 needed); k % 4 == 0 keeps each vec4 on two words.
fn wv4(row: u32, k4: u32, k: u32) -> vec4<f32> {
    let i = (row * k + k4 * 4u) / 2u;
    return vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u]));
}
