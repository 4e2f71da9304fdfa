// The subgroup size and count a 64-invocation compute workgroup really runs with (the adapter's
// reported range is only a range).
@group(0) @binding(0) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) size: u32, @builtin(num_subgroups) n: u32) {
    if (lid == 0u) {
        out[0] = size;
        out[1] = n;
    }
}
