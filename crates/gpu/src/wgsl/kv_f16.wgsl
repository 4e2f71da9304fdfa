// f16 KV pool, two elements per word (element i in half i & 1 of word i / 2).
@group(0) @binding(1) var<storage, ACCESS> kc: array<u32>;
@group(0) @binding(2) var<storage, ACCESS> vc: array<u32>;

fn k_at(i: u32) -> f32 { return unpack2x16float(kc[i >> 1u])[i & 1u]; }
fn v_at(i: u32) -> f32 { return unpack2x16float(vc[i >> 1u])[i & 1u]; }
