// f32 KV pool: element i of the K or V pool.
@group(0) @binding(1) var<storage, ACCESS> kc: array<f32>;
@group(0) @binding(2) var<storage, ACCESS> vc: array<f32>;

fn k_at(i: u32) -> f32 { return kc[i]; }
fn v_at(i: u32) -> f32 { return vc[i]; }
