// out[i, j] = silu(gate[i, j]) * up[i, j], silu(g) = g / (1 + exp(-g)) as the CPU kernels.
struct P {
    rows: u32, cols: u32, g_off: u32, g_stride: u32,
    u_off: u32, u_stride: u32, o_off: u32, o_stride: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    let i = g.y + g.z * 65535u;
    if (c >= p.cols || i >= p.rows) {
        return;
    }
    let v = gate[p.g_off + i * p.g_stride + c];
    out[p.o_off + i * p.o_stride + c] = v / (1.0 + exp(-v)) * up[p.u_off + i * p.u_stride + c];
}
