// Byte access into `w: array<u32>` for GGML blocks, whose 34- or 18-byte size leaves them only
// 2-byte aligned (little endian, as the files store them).

// The f16 at an even byte offset.
fn half_at(o: u32) -> f32 {
    return unpack2x16float(w[o >> 2u] >> ((o & 2u) * 8u)).x;
}

// Four bytes from any byte offset (they may straddle two words).
fn word_at(o: u32) -> u32 {
    let s = (o & 3u) * 8u;
    let a = w[o >> 2u];
    if (s == 0u) {
        return a;
    }
    return (a >> s) | (w[(o >> 2u) + 1u] << (32u - s));
}
