// Sum of one value per invocation over a 64-invocation workgroup (tree in workgroup memory; the
// norms are a small share of a step, so no subgroup variant).
var<workgroup> sums: array<f32, 64>;

fn wg_sum(v: f32, lid: u32) -> f32 {
    sums[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sums[lid] += sums[lid + s];
        }
        workgroupBarrier();
    }
    let total = sums[0];
    workgroupBarrier();
    return total;
}
