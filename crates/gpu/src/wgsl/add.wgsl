// x[i, :cols] += r[i, :cols] (the last residual of a layer), or, with `bcast`, r's single row to
// every row of x (a bias: Qwen2's q/k/v bias on rows of a fused qkv tensor).
struct P {
    rows: u32, cols: u32, x_off: u32, x_stride: u32,
    r_off: u32, r_stride: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> r: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    let i = g.y + g.z * 65535u;
    if (c >= p.cols || i >= p.rows) {
        return;
    }
    x[p.x_off + i * p.x_stride + c] += r[p.r_off + i * p.r_stride + c];
}
