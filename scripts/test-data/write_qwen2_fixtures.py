#!/usr/bin/env python3
"""Generate the tiny random Qwen2 test fixtures in fixtures/qwen2-tiny/.

Run (from anywhere):

    python -m venv .venv-testdata && .venv-testdata/bin/pip install -r scripts/test-data/requirements.txt && .venv-testdata/bin/python scripts/test-data/write_qwen2_fixtures.py

Optional: --tokenizer-dir DIR (folder holding the real Qwen3 tokenizer.json and
tokenizer_config.json; by default fixtures/qwen3-tokenizer, shared/fixtures/qwen3-tokenizer
or ../shared/fixtures/qwen3-tokenizer relative to the repo root) and --out DIR.

The output is deterministic (fixed numpy seed, no timestamps) and committed;
rerunning the script with the gguf version of requirements.txt reproduces the same bytes.

What it writes:
  * Hugging Face layout: config.json, generation_config.json, tokenizer.json,
    tokenizer_config.json, model.safetensors (float16, hand-written format).
  * GGUF (arch "qwen2"), one file per type: tiny-{F16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,
    Q2_K,Q3_K,Q4_K,Q5_K,Q6_K}.gguf. All 2-D matrices have the file's type,
    norms and biases are F32. F16..Q5_1 hold the safetensors weights
    (quantized with gguf.quants.quantize); gguf-py cannot quantize k-quants,
    so the Q2_K..Q6_K files hold random *valid* blocks (random quant bytes and
    sub-block scales, super-block d/dmin chosen for a weight std of ~0.05), so
    their weights differ from the safetensors ones.

The model: hidden 256, intermediate 256, 2 layers, 4 query heads / 2 KV heads,
head_dim 64, q/k/v biases, untied lm_head, vocab 512 (509 byte-level BPE
tokens + merges carved out of the real Qwen tokenizer, then <|endoftext|>,
<|im_start|>, <|im_end|> at 509..511).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import struct
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as FT
from gguf.quants import dequantize, quantize

SEED = 20240602
REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- dims
HIDDEN = 256
INTER = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 64
RMS_EPS = 1e-6
ROPE_THETA = 1000000.0
MAX_POS = 4096
N_BASE = 509  # ids 0..508 come from the real BPE vocab
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = N_BASE + len(SPECIALS)  # 512
BOS_ID = PAD_ID = 509
EOS_ID = 511

GGUF_TYPES = [
    ("F16", T.F16, FT.MOSTLY_F16),
    ("Q8_0", T.Q8_0, FT.MOSTLY_Q8_0),
    ("Q4_0", T.Q4_0, FT.MOSTLY_Q4_0),
    ("Q4_1", T.Q4_1, FT.MOSTLY_Q4_1),
    ("Q5_0", T.Q5_0, FT.MOSTLY_Q5_0),
    ("Q5_1", T.Q5_1, FT.MOSTLY_Q5_1),
    # llama.cpp has no "pure" k-quant file types; the *_S / plain ones are the closest.
    ("Q2_K", T.Q2_K, FT.MOSTLY_Q2_K),
    ("Q3_K", T.Q3_K, FT.MOSTLY_Q3_K_S),
    ("Q4_K", T.Q4_K, FT.MOSTLY_Q4_K_S),
    ("Q5_K", T.Q5_K, FT.MOSTLY_Q5_K_S),
    ("Q6_K", T.Q6_K, FT.MOSTLY_Q6_K),
]
K_TYPES = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K}
TARGET_STD = 0.05
REF_TENSOR = "blk.0.ffn_down.weight"


# ---------------------------------------------------------------- tokenizer
def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def find_tokenizer_dir(arg: str | None) -> Path:
    cands = [Path(arg)] if arg else [REPO / sub / "fixtures" / "qwen3-tokenizer" for sub in (".", "shared", "../shared")]
    for c in cands:
        if (c / "tokenizer.json").is_file() and (c / "tokenizer_config.json").is_file():
            return c
    sys.exit(f"real Qwen tokenizer not found in {', '.join(map(str, cands))}; pass --tokenizer-dir")


def build_tokenizer(tok_dir: Path):
    real = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    real_cfg = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    model = real["model"]
    assert model["type"] == "BPE"
    by_id = {i: t for t, i in model["vocab"].items() if i < N_BASE}
    assert sorted(by_id) == list(range(N_BASE)), "ids < 509 are not contiguous"
    tokens = [by_id[i] for i in range(N_BASE)]
    b2u = bytes_to_unicode()
    byte_chars = set(b2u.values())
    assert set(tokens[:256]) == byte_chars, "first 256 ids are not the byte-level tokens"
    byte_order_matches = tokens[:256] == list(b2u.values())
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and vocab.get(a + b, N_BASE) < N_BASE:
            merges.append([a, b])
    produced = {a + b for a, b in merges}
    unreachable = [t for t in tokens[256:] if t not in produced]

    tok = {
        "version": real.get("version", "1.0"),
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": N_BASE + k, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for k, s in enumerate(SPECIALS)
        ],
        "normalizer": real["normalizer"],
        "pre_tokenizer": real["pre_tokenizer"],
        "post_processor": real["post_processor"],
        "decoder": real["decoder"],
        "model": {**{k: v for k, v in model.items() if k not in ("vocab", "merges")}, "vocab": vocab, "merges": merges},
    }

    real_ids = {s: next(a["id"] for a in real["added_tokens"] if a["content"] == s) for s in SPECIALS}
    atd = {}
    for k, s in enumerate(SPECIALS):
        atd[str(N_BASE + k)] = real_cfg["added_tokens_decoder"][str(real_ids[s])]
    cfg = dict(real_cfg)
    cfg["added_tokens_decoder"] = atd
    cfg["additional_special_tokens"] = [s for s in real_cfg.get("additional_special_tokens", []) if s in SPECIALS]
    cfg["eos_token"] = "<|im_end|>"
    cfg["pad_token"] = "<|endoftext|>"
    info = {"merges": len(merges), "byte_order_matches_bytes_to_unicode": byte_order_matches,
            "tokens_without_merge": unreachable}
    return tokens, merges, tok, cfg, info


# ---------------------------------------------------------------- weights
def make_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """HF-named float16 tensors (the canonical values for every float file)."""
    def mat(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.05).astype(np.float16)

    def bias(n):
        return (rng.standard_normal(n, dtype=np.float32) * 0.5).astype(np.float16)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float16)

    q_out, kv_out = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    w = {"model.embed_tokens.weight": mat(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(HIDDEN)
        w[p + "self_attn.q_proj.weight"] = mat(q_out, HIDDEN)
        w[p + "self_attn.q_proj.bias"] = bias(q_out)
        w[p + "self_attn.k_proj.weight"] = mat(kv_out, HIDDEN)
        w[p + "self_attn.k_proj.bias"] = bias(kv_out)
        w[p + "self_attn.v_proj.weight"] = mat(kv_out, HIDDEN)
        w[p + "self_attn.v_proj.bias"] = bias(kv_out)
        w[p + "self_attn.o_proj.weight"] = mat(HIDDEN, q_out)
        w[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        w[p + "mlp.gate_proj.weight"] = mat(INTER, HIDDEN)
        w[p + "mlp.up_proj.weight"] = mat(INTER, HIDDEN)
        w[p + "mlp.down_proj.weight"] = mat(HIDDEN, INTER)
    w["model.norm.weight"] = norm(HIDDEN)
    w["lm_head.weight"] = mat(VOCAB, HIDDEN)
    return w


def hf_to_gguf_name(name: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")  # model.layers.N.<rest>
    n, rest = parts[2], ".".join(parts[3:])
    table = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    return f"blk.{n}.{table[rest]}"


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    blobs = []
    for name, t in tensors.items():
        assert t.dtype == np.float16
        b = np.ascontiguousarray(t).astype("<f2").tobytes()
        header[name] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------- k-quant random blocks
# (offset of the f16 d, offset of the f16 dmin or None) inside each block, per gguf-py quants.py.
K_LAYOUT = {
    T.Q2_K: (16 + 64, 16 + 64 + 2),    # scales[16], qs[64], d, dmin
    T.Q3_K: (32 + 64 + 12, None),       # hmask[32], qs[64], scales[12], d
    T.Q4_K: (0, 2),                     # d, dmin, scales[12], qs[128]
    T.Q5_K: (0, 2),                     # d, dmin, scales[12], qh[32], qs[128]
    T.Q6_K: (128 + 64 + 16, None),      # ql[128], qh[64], scales[16] (int8), d
}
# dmin / d ratio that centres the weights: E[q] for the unsigned formats (scales and mins
# have the same distribution, so E[d*sc*q - dmin*m] = E[sc]*(d*E[q] - dmin)).
K_DMIN_RATIO = {T.Q2_K: 1.5, T.Q4_K: 7.5, T.Q5_K: 15.5}
SUBNORMAL_D: dict[T, int] = {}  # how many super-block d's came out as f16 subnormals (reported)


def random_kquant(rng: np.random.Generator, qtype: T, rows: int, cols: int, scale: float) -> np.ndarray:
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    nb = cols // block_elems
    assert nb * block_elems == cols
    raw = rng.integers(0, 256, size=(rows, nb, block_bytes), dtype=np.uint8)
    d_off, dmin_off = K_LAYOUT[qtype]
    # per-block variety, log-uniform over [1/3, 3]: for Q5_K/Q6_K this puts some d's in the
    # f16 subnormal range (as real small-weight k-quant files have) and some above it.
    jitter = np.exp(rng.uniform(-np.log(3), np.log(3), size=(rows, nb))).astype(np.float32)
    d = (scale * jitter).astype(np.float16)
    SUBNORMAL_D[qtype] = SUBNORMAL_D.get(qtype, 0) + int((np.abs(d) < np.float16(6.104e-5)).sum())
    raw[:, :, d_off:d_off + 2] = d.view(np.uint8).reshape(rows, nb, 2)
    if dmin_off is not None:
        dmin = (scale * jitter * K_DMIN_RATIO[qtype]).astype(np.float16)
        raw[:, :, dmin_off:dmin_off + 2] = dmin.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * block_bytes)


def calibrate_kscale(qtype: T) -> float:
    """The base d giving dequantized std ~TARGET_STD (measured on a probe, own rng)."""
    probe_rng = np.random.default_rng(SEED + int(qtype))
    base = 1e-3
    raw = random_kquant(probe_rng, qtype, 256, 256, base)
    std = float(dequantize(raw, qtype).std())
    return base * TARGET_STD / std


# ---------------------------------------------------------------- GGUF
def write_gguf(path: Path, type_name: str, qtype: T, ftype: FT, weights, tokens, chat_template,
               rng: np.random.Generator, kscale: float | None) -> None:
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name(f"Qwen2 tiny random ({type_name})")
    w.add_context_length(MAX_POS)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_block_count(LAYERS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens["list"])
    w.add_token_types(tokens["types"])
    w.add_token_merges(tokens["merges"])
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_bos_token_id(BOS_ID)
    w.add_add_bos_token(False)
    w.add_chat_template(chat_template)
    for hf_name, t in weights.items():
        name = hf_to_gguf_name(hf_name)
        if t.ndim == 1:
            w.add_tensor(name, t.astype(np.float32))
        elif qtype in K_TYPES:
            rows, cols = t.shape
            w.add_tensor(name, random_kquant(rng, qtype, rows, cols, kscale), raw_dtype=qtype)
        elif qtype == T.F16:
            w.add_tensor(name, t)
        else:
            w.add_tensor(name, quantize(t.astype(np.float32), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_gguf(path: Path, qtype: T, weights) -> tuple[float, dict]:
    """Read back: names, types, shapes, finiteness. Returns (std of all matrices, ref entry)."""
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "qwen2"
    by_name = {t.name: t for t in r.tensors}
    assert len(by_name) == len(weights), (len(by_name), len(weights))
    vals = []
    ref = None
    for hf_name, src in weights.items():
        t = by_name[hf_to_gguf_name(hf_name)]
        want_type = T.F32 if src.ndim == 1 else qtype
        assert t.tensor_type == want_type, (t.name, t.tensor_type, want_type)
        # ReaderTensor.shape is in ggml order (fastest dim first)
        assert list(map(int, t.shape))[::-1] == list(src.shape), (t.name, t.shape, src.shape)
        x = dequantize(t.data, t.tensor_type).reshape(src.shape).astype(np.float32)
        assert np.isfinite(x).all(), f"non-finite values in {t.name} of {path.name}"
        if src.ndim == 1 or qtype in (T.F16,):
            assert np.array_equal(x, src.astype(np.float32)), t.name
        elif qtype not in K_TYPES:
            err = float(np.abs(x - src.astype(np.float32)).max())
            assert err < 0.05, (t.name, err)
        if src.ndim == 2:
            vals.append(x.ravel())
        if t.name == REF_TENSOR:
            flat = x.ravel()
            ref = {"file": path.name, "tensor": REF_TENSOR, "shape": list(src.shape),
                   "type": qtype.name, "data_offset": int(t.data_offset), "n_bytes": int(t.n_bytes),
                   "first": [float(repr(float(v))) for v in flat[:512]],
                   "sum": float(flat.astype(np.float64).sum()), "count": int(flat.size)}
    return float(np.concatenate(vals).std()), ref


# ---------------------------------------------------------------- main
def dump_json(path: Path, obj, indent=2) -> None:
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer-dir")
    ap.add_argument("--out", default=str(REPO / "fixtures" / "qwen2-tiny"))
    args = ap.parse_args()
    ver = importlib.metadata.version("gguf")
    if ver != "0.19.0":
        print(f"warning: gguf {ver} installed; the committed fixtures were made with 0.19.0", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokens, merges, tok_json, tok_cfg, info = build_tokenizer(find_tokenizer_dir(args.tokenizer_dir))
    print(f"tokenizer: {N_BASE} BPE tokens, {info['merges']} merges, byte order == bytes_to_unicode: "
          f"{info['byte_order_matches_bytes_to_unicode']}, tokens >=256 with no merge: {info['tokens_without_merge']}")
    dump_json(out / "tokenizer.json", tok_json)
    dump_json(out / "tokenizer_config.json", tok_cfg)

    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "max_position_embeddings": MAX_POS,
        "max_window_layers": LAYERS,
        "model_type": "qwen2",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": RMS_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }
    dump_json(out / "config.json", config)
    dump_json(out / "generation_config.json", {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
                                                "pad_token_id": PAD_ID, "do_sample": False})

    rng = np.random.default_rng(SEED)
    weights = make_weights(rng)
    write_safetensors(out / "model.safetensors", weights)

    gguf_tokens = {
        "list": tokens + SPECIALS,
        "types": [int(gguf.TokenType.NORMAL)] * N_BASE + [int(gguf.TokenType.CONTROL)] * len(SPECIALS),
        "merges": [f"{a} {b}" for a, b in merges],
    }
    for type_name, qtype, ftype in GGUF_TYPES:
        path = out / f"tiny-{type_name}.gguf"
        kscale = calibrate_kscale(qtype) if qtype in K_TYPES else None
        SUBNORMAL_D.clear()
        # each k-quant file gets its own stream so adding/removing a type changes no other file
        krng = np.random.default_rng([SEED, int(qtype)])
        write_gguf(path, type_name, qtype, ftype, weights, gguf_tokens, tok_cfg["chat_template"], krng, kscale)
        std, ref = check_gguf(path, qtype, weights)
        extra = f" (base d {kscale:.3g}, subnormal d: {SUBNORMAL_D.get(qtype, 0)})" if kscale else ""
        print(f"{path.name:18s} {path.stat().st_size:>9d} B  matrix std {std:.5f}{extra}")

    total = 0
    for p in sorted(out.iterdir()):
        total += p.stat().st_size
        print(f"  {p.name:24s} {p.stat().st_size:>9d}")
    print(f"total {total} bytes ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
