// bf16 KV pool, two elements per word; a bf16 is the high half of an f32.
@group(0) @binding(1) var<storage, ACCESS> kc: array<u32>;
@group(0) @binding(2) var<storage, ACCESS> vc: array<u32>;

fn bf_at(v: u32, hi: bool) -> f32 { return bitcast<f32>(select(v << 16u, v & 0xffff0000u, hi)); }
fn k_at(i: u32) -> f32 { return bf_at(kc[i >> 1u], (i & 1u) == 1u); }
fn v_at(i: u32) -> f32 { return bf_at(vc[i >> 1u], (i & 1u) == 1u); }
