// Paged causal attention, GQA-aware, online softmax, f32 accumulation. One workgroup per
// (query tile, kv head, KV split): a tile is up to QT consecutive tokens of one sequence, and
// its rows are (token, query head of the kv head's group), at most RMAX, so each K/V row is read
// once for all of them. Keys are walked in tiles of 64 (one per invocation for the scores, then
// the invocations own head_dim lanes for the V sum); key j of a sequence lives in physical
// block tables[j / 16], row j % 16. Row r of token i sees keys 0 ..= pos[i].
// The KV length is cut into splits of `split` keys at fixed positions (so a row's result never
// depends on its batch neighbours); with one split the rows are written directly, otherwise
// (m, l, acc) partials go to `out` for attn_merge.
struct P {
    hd: u32, kvh: u32, group: u32, q_off: u32,
    q_stride: u32, o_off: u32, o_stride: u32, scale: f32,
    split: u32, splits: u32, tiles_off: u32, pos_off: u32,
    seq_off: u32, tab_off: u32, direct: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> data: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const KT: u32 = 64u;
const RMAX: u32 = 16u;
const DL: u32 = 4u; // head_dim lanes per invocation: head_dim <= 256
var<workgroup> sc: array<f32, 1024>; // [RMAX][KT] scores, then probabilities
var<workgroup> alpha: array<f32, 16>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tile = wid.x;
    let kh = wid.y;
    let sp = wid.z;
    let t0 = data[p.tiles_off + 2u * tile];
    let nt = data[p.tiles_off + 2u * tile + 1u];
    let rows = nt * p.group;
    let tab = data[p.tab_off + data[p.seq_off + t0]];
    let kv_len = data[p.pos_off + t0 + nt - 1u] + 1u;
    let lo = sp * p.split;
    let hi = min(lo + p.split, kv_len);
    let neg_inf = bitcast<f32>(0xff800000u);

    var m = neg_inf; // row lid's running max and sum (lid < rows)
    var l = 0.0;
    var acc: array<array<f32, 4>, 16>;
    for (var r = 0u; r < RMAX; r++) {
        for (var i = 0u; i < DL; i++) {
            acc[r][i] = 0.0;
        }
    }
    for (var kb = lo; kb < hi; kb += KT) {
        // Scores of key kb + lid against every row.
        let j = kb + lid;
        var kbase = 0u;
        if (j < hi) {
            kbase = ((data[tab + j / 16u] * p.kvh + kh) * 16u + j % 16u) * p.hd;
        }
        for (var r = 0u; r < RMAX; r++) {
            var s = neg_inf;
            let tok = t0 + r / p.group;
            if (r < rows && j < hi && j <= data[p.pos_off + tok]) {
                let qb = p.q_off + tok * p.q_stride + (kh * p.group + r % p.group) * p.hd;
                var d0 = 0.0;
                for (var d = 0u; d < p.hd; d++) {
                    d0 += q[qb + d] * k_at(kbase + d);
                }
                s = d0 * p.scale;
            }
            sc[r * KT + lid] = s;
        }
        workgroupBarrier();
        // Online softmax bookkeeping: invocation r owns row r.
        if (lid < rows) {
            var mt = m;
            for (var c = 0u; c < KT; c++) {
                mt = max(mt, sc[lid * KT + c]);
            }
            var a = 1.0;
            if (mt != neg_inf) {
                a = exp(m - mt);
                var sum = 0.0;
                for (var c = 0u; c < KT; c++) {
                    let e = exp(sc[lid * KT + c] - mt);
                    sc[lid * KT + c] = e;
                    sum += e;
                }
                l = l * a + sum;
                m = mt;
            } else {
                for (var c = 0u; c < KT; c++) {
                    sc[lid * KT + c] = 0.0;
                }
            }
            alpha[lid] = a;
        }
        workgroupBarrier();
        // acc[r][d] = acc[r][d] * alpha[r] + sum_j p[r][j] v[j][d]; invocation owns d = lid + 64 i.
        let nk = min(KT, hi - kb);
        for (var i = 0u; i < DL; i++) {
            let d = lid + 64u * i;
            if (d < p.hd) {
                for (var r = 0u; r < rows; r++) {
                    acc[r][i] *= alpha[r];
                }
                for (var c = 0u; c < nk; c++) {
                    let jj = kb + c;
                    let v = v_at(((data[tab + jj / 16u] * p.kvh + kh) * 16u + jj % 16u) * p.hd + d);
                    for (var r = 0u; r < rows; r++) {
                        acc[r][i] += sc[r * KT + c] * v;
                    }
                }
            }
        }
        workgroupBarrier();
    }
    // Rows' (m, l) to every invocation through workgroup memory.
    if (lid < rows) {
        sc[lid] = m;
        sc[RMAX + lid] = l;
    }
    workgroupBarrier();
    for (var r = 0u; r < rows; r++) {
        let tok = t0 + r / p.group;
        let h = kh * p.group + r % p.group;
        let rm = sc[r];
        let rl = sc[RMAX + r];
        for (var i = 0u; i < DL; i++) {
            let d = lid + 64u * i;
            if (d < p.hd) {
                if (p.direct != 0u) {
                    out[p.o_off + tok * p.o_stride + h * p.hd + d] = select(0.0, acc[r][i] / rl, rl > 0.0);
                } else {
                    let b = (((tile * p.kvh + kh) * p.splits + sp) * RMAX + r) * (p.hd + 2u);
                    out[b + 2u + d] = acc[r][i];
                    if (d == 0u) {
                        out[b] = rm;
                        out[b + 1u] = rl;
                    }
                }
            }
        }
    }
}
