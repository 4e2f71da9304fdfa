//! The GGUF block formats run as stored, and their 8-row layout.
//!
//! A GGUF row-block is read into a [`Row`] (unsigned codes, integer sub-block scales and mins,
//! f16 scale bits): the one place each format's bit packing is decoded. 8 rows' blocks at the
//! same column are then written into one *unit*, laid out for the SIMD tiles: one 32-byte
//! vector holds the same 4 consecutive values of 8 rows (4 bytes per 32-bit lane), so a
//! broadcast of 4 activation bytes and one `vpdpbusd` / `maddubs` / `sdot` step advance 8 rows
//! (as in [`crate::repack`]). Units of a group of 8 rows are contiguous (`[group][block]`); the
//! last group is padded with zero rows (scales 0).
//!
//! Units, byte offsets (`d`, `dmin`, `m`: 8 f16, row r at 2r; per-sub-block bytes: `[sub][row]`):
//! - Q4_K (1184 = 148 per row-block, GGUF 144): d 0, dmin 16, scales 32 (8x8 u8), mins 96
//!   (`[pair of sub-blocks][row][2]` u8),
//!   then for each pair of sub-blocks g (0..4) 8 vectors v at `160 + 32 (8g + v)`: lane r holds
//!   row r's GGUF bytes `qs[32g + 4v..][..4]`, whose low nibbles are values `64g + 4v + e` and
//!   high nibbles values `64g + 32 + 4v + e` (e: 0..4).
//! - Q5_K (1440 = 180 per row-block, GGUF 176): Q4_K's unit, then the fifth bits at
//!   `1184 + 32 (2g + h)`: lane r bit `8e + t` is the high bit of low-nibble value e of vector
//!   `v = 4h + t`, bit `8e + 4 + t` that of its high-nibble value.
//! - Q6_K (1680 = 210 per row-block, as GGUF): d 0, scales 16 (16x8 i8), then for each
//!   sub-block j of 16 values 96 bytes at `144 + 96 j`: L0 (nibbles of values `16j + e` low,
//!   `16j + 4 + e` high), L1 (`16j + 8 + e`, `16j + 12 + e`), H (the 2 high bits of those four,
//!   in bits 0-1, 2-3, 4-5, 6-7 of byte e).
//! - Q5_0 (176 = 22, as GGUF): d 0, fifth bits 16 (lane r bit `8e + v`: value `4v + e`, bit
//!   `8e + 4 + v`: value `16 + 4v + e`), then 4 vectors at `48 + 32 v`: row r's GGUF bytes
//!   `qs[4v..][..4]` (low nibble value `4v + e`, high nibble `16 + 4v + e`).
//! - Q4_1 (160 = 20): d 0, m 16, nibbles at `32 + 32 v` as Q5_0's.
//! - Q5_1 (192 = 24): d 0, m 16, fifth bits 32, nibbles at `64 + 32 v`.
use half::f16;

/// Rows per unit.
pub const ROWS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Q4K,
    Q5K,
    Q6K,
    Q5_0,
    Q4_1,
    Q5_1,
}

impl Format {
    pub const ALL: [Format; 6] = [Format::Q4K, Format::Q5K, Format::Q6K, Format::Q5_0, Format::Q4_1, Format::Q5_1];

    /// The GGUF type name, lower case ("q4_k").
    pub fn name(self) -> &'static str {
        match self {
            Format::Q4K => "q4_k",
            Format::Q5K => "q5_k",
            Format::Q6K => "q6_k",
            Format::Q5_0 => "q5_0",
            Format::Q4_1 => "q4_1",
            Format::Q5_1 => "q5_1",
        }
    }

    /// Values per block: 256 (k-quants) or 32.
    pub fn block_values(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K | Format::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes of one GGUF block.
    pub fn gguf_bytes(self) -> usize {
        match self {
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
            Format::Q5_0 => 22,
            Format::Q4_1 => 20,
            Format::Q5_1 => 24,
        }
    }

    /// Bytes of one 8-row unit.
    pub fn unit_bytes(self) -> usize {
        match self {
            Format::Q4K => 1184,
            Format::Q5K => 1440,
            Format::Q6K => 1680,
            Format::Q5_0 => 176,
            Format::Q4_1 => 160,
            Format::Q5_1 => 192,
        }
    }

    /// Whether activations come in blocks of 256 ([`super::act::XK`]) rather than 32.
    pub fn k_quant(self) -> bool {
        self.block_values() == 256
    }
}

/// One row-block decoded: unsigned codes and integer scales, as the kernels use them.
/// - Q4_K / Q5_K: `x = d·sc[j]·q − dmin·mn[j]`, sub-block j of 32 values (j < 8).
/// - Q6_K: `x = d·sc[j]·(q − 32)`, sub-block j of 16 values (signed sc).
/// - Q5_0: `x = d·(q − 16)`. Q4_1 / Q5_1: `x = d·q + m` (`dmin` holds m's bits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub q: [u8; 256],
    pub sc: [i32; 16],
    pub mn: [i32; 16],
    pub d: u16,
    pub dmin: u16,
}

impl Row {
    pub const ZERO: Row = Row { q: [0; 256], sc: [0; 16], mn: [0; 16], d: 0, dmin: 0 };

    /// Value `i` as f32 (the reference the unit layout and kernels are checked against).
    pub fn value(&self, f: Format, i: usize) -> f32 {
        let (d, dm) = (f16::from_bits(self.d).to_f32(), f16::from_bits(self.dmin).to_f32());
        let q = self.q[i] as f32;
        match f {
            Format::Q4K | Format::Q5K => d * self.sc[i / 32] as f32 * q - dm * self.mn[i / 32] as f32,
            Format::Q6K => d * self.sc[i / 16] as f32 * (q - 32.0),
            Format::Q5_0 => d * (q - 16.0),
            Format::Q4_1 | Format::Q5_1 => d * q + dm,
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The 6-bit scale and min of Q4_K / Q5_K sub-block `j` (0..8), as the kernels' integers.
fn scale_min(j: usize, q: &[u8]) -> (i32, i32) {
    let (d, m) = crate::kquants::scale_min(j, q);
    (d as i32, m as i32)
}

/// The 32 codes of a legacy block: byte j of `qs` holds value j (low nibble) and j + 16 (high),
/// bit j of `qh` (when given) value j's fifth bit.
fn legacy_codes(qs: &[u8], qh: Option<u32>, q: &mut [u8]) {
    for j in 0..16 {
        q[j] = qs[j] & 0xF;
        q[j + 16] = qs[j] >> 4;
    }
    if let Some(h) = qh {
        for (j, c) in q[..32].iter_mut().enumerate() {
            *c |= (((h >> j) & 1) as u8) << 4;
        }
    }
}

/// Decode one GGUF block (`b.len() == f.gguf_bytes()`).
pub fn decode(f: Format, b: &[u8]) -> Row {
    assert_eq!(b.len(), f.gguf_bytes(), "{}: block bytes", f.name());
    let mut r = Row::ZERO;
    match f {
        Format::Q4K | Format::Q5K => {
            (r.d, r.dmin) = (u16_at(b, 0), u16_at(b, 2));
            for j in 0..8 {
                (r.sc[j], r.mn[j]) = scale_min(j, &b[4..16]);
            }
            let (qh, qs) = if f == Format::Q5K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            for g in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * g + l];
                    r.q[64 * g + l] = byte & 0xF;
                    r.q[64 * g + 32 + l] = byte >> 4;
                    if let Some(qh) = qh {
                        r.q[64 * g + l] |= ((qh[l] >> (2 * g)) & 1) << 4;
                        r.q[64 * g + 32 + l] |= ((qh[l] >> (2 * g + 1)) & 1) << 4;
                    }
                }
            }
        }
        Format::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            r.d = u16_at(b, 208);
            for (j, s) in sc.iter().enumerate() {
                r.sc[j] = *s as i8 as i32;
            }
            // Per half of 128: byte l of ql holds values l (low nibble) and l + 64 (high), byte
            // l + 32 values l + 32 and l + 96; byte l of qh their 2 high bits, in that order.
            for half in 0..2 {
                for l in 0..32 {
                    let (a, c, h) = (ql[64 * half + l], ql[64 * half + 32 + l], qh[32 * half + l]);
                    let q = &mut r.q[128 * half + l..];
                    q[0] = (a & 0xF) | (h & 3) << 4;
                    q[32] = (c & 0xF) | ((h >> 2) & 3) << 4;
                    q[64] = (a >> 4) | ((h >> 4) & 3) << 4;
                    q[96] = (c >> 4) | ((h >> 6) & 3) << 4;
                }
            }
        }
        Format::Q5_0 => {
            r.d = u16_at(b, 0);
            legacy_codes(&b[6..22], Some(u32::from_le_bytes([b[2], b[3], b[4], b[5]])), &mut r.q);
        }
        Format::Q4_1 => {
            (r.d, r.dmin) = (u16_at(b, 0), u16_at(b, 2));
            legacy_codes(&b[4..20], None, &mut r.q);
        }
        Format::Q5_1 => {
            (r.d, r.dmin) = (u16_at(b, 0), u16_at(b, 2));
            legacy_codes(&b[8..24], Some(u32::from_le_bytes([b[4], b[5], b[6], b[7]])), &mut r.q);
        }
    }
    r
}

/// Byte of sub-block j's min for row r (Q4_K / Q5_K): mins in pairs of sub-blocks, so that
/// 16 bytes widened to i16 hold `(mn[2p], mn[2p + 1])` of each row in its 32-bit lane (one
/// `pmaddwd` / `vpdpwssd` with the activations' sums per pair).
fn min_at(base: usize, j: usize, r: usize) -> usize {
    base + 16 * (j / 2) + 2 * r + j % 2
}

/// Where a unit's parts start, per format.
struct Offsets {
    dmin: usize,
    sc: usize,
    mn: usize,
    /// Fifth-bit vectors (0: none).
    high: usize,
    /// Nibble vectors.
    qs: usize,
}

fn offsets(f: Format) -> Offsets {
    match f {
        Format::Q4K => Offsets { dmin: 16, sc: 32, mn: 96, high: 0, qs: 160 },
        Format::Q5K => Offsets { dmin: 16, sc: 32, mn: 96, high: 1184, qs: 160 },
        Format::Q6K => Offsets { dmin: 0, sc: 16, mn: 0, high: 0, qs: 144 },
        Format::Q5_0 => Offsets { dmin: 0, sc: 0, mn: 0, high: 16, qs: 48 },
        Format::Q4_1 => Offsets { dmin: 16, sc: 0, mn: 0, high: 0, qs: 32 },
        Format::Q5_1 => Offsets { dmin: 16, sc: 0, mn: 0, high: 32, qs: 64 },
    }
}

/// For each byte of a nibble vector of the 4-bit-vector formats (Q4_K, Q5_K, Q5_0, Q4_1,
/// Q5_1): (vector index, row, e) -> the values in its low and high nibble.
fn nibble_values(f: Format, v: usize, e: usize) -> (usize, usize) {
    if f.k_quant() {
        let (g, v) = (v / 8, v % 8);
        (64 * g + 4 * v + e, 64 * g + 32 + 4 * v + e)
    } else {
        (4 * v + e, 16 + 4 * v + e)
    }
}

/// Write 8 rows into one unit (`out.len() == f.unit_bytes()`).
pub fn pack(f: Format, rows: &[Row; ROWS], out: &mut [u8]) {
    assert_eq!(out.len(), f.unit_bytes());
    out.fill(0);
    let o = offsets(f);
    for (r, row) in rows.iter().enumerate() {
        out[2 * r..2 * r + 2].copy_from_slice(&row.d.to_le_bytes());
        if o.dmin > 0 {
            out[o.dmin + 2 * r..o.dmin + 2 * r + 2].copy_from_slice(&row.dmin.to_le_bytes());
        }
        let subs = match f {
            Format::Q4K | Format::Q5K => 8,
            Format::Q6K => 16,
            _ => 0,
        };
        for j in 0..subs {
            out[o.sc + 8 * j + r] = row.sc[j] as u8;
            if o.mn > 0 {
                out[min_at(o.mn, j, r)] = row.mn[j] as u8;
            }
        }
        if f == Format::Q6K {
            for j in 0..16 {
                let base = o.qs + 96 * j + 4 * r;
                for e in 0..4 {
                    let c = |t: usize| row.q[16 * j + 4 * t + e];
                    out[base + e] = (c(0) & 0xF) | (c(1) & 0xF) << 4;
                    out[base + 32 + e] = (c(2) & 0xF) | (c(3) & 0xF) << 4;
                    out[base + 64 + e] = (c(0) >> 4) | (c(1) >> 4) << 2 | (c(2) >> 4) << 4 | (c(3) >> 4) << 6;
                }
            }
            continue;
        }
        let vectors = f.block_values() / 8;
        for v in 0..vectors {
            for e in 0..4 {
                let (lo, hi) = nibble_values(f, v, e);
                out[o.qs + 32 * v + 4 * r + e] = (row.q[lo] & 0xF) | (row.q[hi] & 0xF) << 4;
                if o.high > 0 {
                    // Fifth bits of 4 vectors per 32-bit lane: bit 8e + t (low), 8e + 4 + t (high).
                    let (h, t) = (v / 4, v % 4);
                    let lane = o.high + 32 * h + 4 * r;
                    let bits = ((row.q[lo] >> 4) as u32) << (8 * e + t) | ((row.q[hi] >> 4) as u32) << (8 * e + 4 + t);
                    let word = u32::from_le_bytes(out[lane..lane + 4].try_into().unwrap()) | bits;
                    out[lane..lane + 4].copy_from_slice(&word.to_le_bytes());
                }
            }
        }
    }
}

/// Row `r` of a unit, decoded back (the exact inverse of [`pack`]).
pub fn unpack(f: Format, unit: &[u8], r: usize) -> Row {
    let o = offsets(f);
    let mut row = Row::ZERO;
    row.d = u16_at(unit, 2 * r);
    if o.dmin > 0 {
        row.dmin = u16_at(unit, o.dmin + 2 * r);
    }
    match f {
        Format::Q4K | Format::Q5K => {
            for j in 0..8 {
                row.sc[j] = unit[o.sc + 8 * j + r] as i32;
                row.mn[j] = unit[min_at(o.mn, j, r)] as i32;
            }
        }
        Format::Q6K => {
            for j in 0..16 {
                row.sc[j] = unit[o.sc + 8 * j + r] as i8 as i32;
                let base = o.qs + 96 * j + 4 * r;
                for e in 0..4 {
                    let (l0, l1, h) = (unit[base + e], unit[base + 32 + e], unit[base + 64 + e]);
                    let nib = [l0 & 0xF, l0 >> 4, l1 & 0xF, l1 >> 4];
                    for (t, n) in nib.into_iter().enumerate() {
                        row.q[16 * j + 4 * t + e] = n | ((h >> (2 * t)) & 3) << 4;
                    }
                }
            }
            return row;
        }
        _ => {}
    }
    for v in 0..f.block_values() / 8 {
        for e in 0..4 {
            let (lo, hi) = nibble_values(f, v, e);
            let byte = unit[o.qs + 32 * v + 4 * r + e];
            row.q[lo] = byte & 0xF;
            row.q[hi] = byte >> 4;
            if o.high > 0 {
                let (h, t) = (v / 4, v % 4);
                let lane = o.high + 32 * h + 4 * r;
                let word = u32::from_le_bytes(unit[lane..lane + 4].try_into().unwrap());
                row.q[lo] |= (((word >> (8 * e + t)) & 1) as u8) << 4;
                row.q[hi] |= (((word >> (8 * e + 4 + t)) & 1) as u8) << 4;
            }
        }
    }
    row
}

/// [`pack`] of 8 GGUF blocks (None: a padding row), without decoding where the unit keeps the
/// file's bytes as they are (Q4_K: scales unpacked, nibbles copied 4 bytes at a time); the other
/// formats go through [`decode`]. The load of a Q4_K_M file is mostly this.
pub fn pack_gguf(f: Format, blocks: &[Option<&[u8]>; ROWS], out: &mut [u8]) {
    if f != Format::Q4K {
        let rows = blocks.map(|b| b.map_or(Row::ZERO, |b| decode(f, b)));
        return pack(f, &rows, out);
    }
    assert_eq!(out.len(), f.unit_bytes());
    out.fill(0);
    let o = offsets(f);
    for (r, b) in blocks.iter().enumerate() {
        let Some(b) = b else { continue };
        assert_eq!(b.len(), f.gguf_bytes(), "{}: block bytes", f.name());
        out[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
        out[o.dmin + 2 * r..o.dmin + 2 * r + 2].copy_from_slice(&b[2..4]);
        for j in 0..8 {
            let (sc, mn) = scale_min(j, &b[4..16]);
            out[o.sc + 8 * j + r] = sc as u8;
            out[min_at(o.mn, j, r)] = mn as u8;
        }
        // Vector v (0..32) of the unit: lane r is the row's GGUF bytes qs[4v..4v + 4].
        for (v, q) in b[16..144].chunks_exact(4).enumerate() {
            out[o.qs + 32 * v + 4 * r..][..4].copy_from_slice(q);
        }
    }
}
