"""Write GGUF test fixtures with llama.cpp's own gguf-py, an implementation independent of ours.

Run from the repo root:

    python -m venv .venv-testdata && .venv-testdata/bin/pip install -r scripts/test-data/requirements.txt && .venv-testdata/bin/python scripts/test-data/write_gguf_fixtures.py

Writes:
  fixtures/gguf/qwen3-tiny-pypi.gguf  fixtures/qwen3-tiny converted the way convert_hf_to_gguf.py
                                      does for Qwen3, with mixed BF16/F32 tensors on purpose.
  fixtures/gguf/kquants.gguf          random blocks of Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, Q4_1, Q5_0,
                                      Q5_1, Q2_K, Q3_K, each with an F32 `<type>.ref` tensor holding
                                      gguf-py's dequantization.
Then reads both back with gguf.GGUFReader and checks them.
"""

import json
import struct
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "fixtures" / "qwen3-tiny"
OUT = ROOT / "fixtures" / "gguf"
TINY = OUT / "qwen3-tiny-pypi.gguf"
KQ = OUT / "kquants.gguf"


def read_safetensors_bf16(path):
    """name -> uint16 array of raw bf16 bits (numpy has no bf16 dtype)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "BF16", (name, info["dtype"])
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + lo:base + hi], dtype="<u2").reshape(info["shape"])
    return out


def bf16_to_f32(bits):
    # bf16 is the top half of an f32, so widening is exact.
    return (bits.astype(np.uint32) << 16).view(np.float32)


def build_vocab(tok, vocab_size):
    """tokens/types as convert_hf_to_gguf.py's get_vocab_base (gpt2-style BPE) builds them."""
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok["added_tokens"]}
    by_id.update({i: a["content"] for i, a in added.items()})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]"); types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i]); types.append(gguf.TokenType.NORMAL)
    # add_array infers the GGUF type from Python values: plain ints -> INT32 array.
    return tokens, [int(t) for t in types]


def merges_as_strings(merges):
    # transformers >= 4.45 stores [a, b] pairs; GGUF wants "a b" with spaces inside parts as U+0120,
    # exactly as gguf.SpecialVocab does.
    if merges and isinstance(merges[0], list):
        enc = lambda s: "".join(chr(ord(c) + 256) if c == " " else c for c in s)
        return [f"{enc(a)} {enc(b)}" for a, b in merges]
    return list(merges)


def write_tiny():
    cfg = json.loads((SRC / "config.json").read_text())
    gen = json.loads((SRC / "generation_config.json").read_text())
    tok = json.loads((SRC / "tokenizer.json").read_text(encoding="utf-8"))
    tok_cfg = json.loads((SRC / "tokenizer_config.json").read_text())
    weights = read_safetensors_bf16(SRC / "model.safetensors")
    assert cfg["tie_word_embeddings"] and "lm_head.weight" not in weights

    w = gguf.GGUFWriter(TINY, "qwen3")  # adds general.architecture
    w.add_name("qwen3-tiny")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])

    tokens, types = build_vocab(tok, cfg["vocab_size"])
    eos = gen.get("eos_token_id", cfg["eos_token_id"])
    eos = eos[0] if isinstance(eos, list) else eos
    endoftext = tokens.index("<|endoftext|>")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges_as_strings(tok["model"]["merges"]))
    w.add_eos_token_id(eos)
    w.add_pad_token_id(endoftext)
    w.add_bos_token_id(endoftext)
    w.add_add_bos_token(False)
    w.add_chat_template(tok_cfg["chat_template"])

    # llama.cpp's own HF -> GGUF tensor name table.
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, cfg["num_hidden_layers"])
    for hf_name, bits in weights.items():
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        assert name is not None, hf_name
        # Type mix to exercise the reader: embeddings and blk.1 matrices BF16, the rest F32.
        if bits.ndim == 2 and (name == "token_embd.weight" or name.startswith("blk.1.")):
            # Raw BF16: pass the bytes as uint8 with raw_dtype; gguf-py turns the byte shape
            # [out, 2*in] back into the element shape [out, in] (then reversed to ggml ne order).
            w.add_tensor(name, bits.view(np.uint8), raw_dtype=T.BF16)
        else:
            w.add_tensor(name, bf16_to_f32(bits))  # HF shape [out, in]; float32 -> F32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights, names


# f16 scale fields to overwrite per block: (byte offset, signed allowed).
# K-quant d/dmin multiply unsigned 6-bit sub-scales/mins and are never negative from llama.cpp's
# quantizer; Q8_0/Q4_0/Q6_K scales may be either sign.
KQ_SCALES = {
    T.Q8_0: [(0, True)],
    T.Q4_0: [(0, True)],
    T.Q4_K: [(0, False), (2, False)],
    T.Q5_K: [(0, False), (2, False)],
    T.Q6_K: [(208, True)],  # d sits at the END of the 210-byte block
    # Added later, after the types above, so their random blocks stay as they were.
    T.Q4_1: [(0, True), (2, True)],  # d, m
    T.Q5_0: [(0, True)],
    T.Q5_1: [(0, True), (2, True)],
    T.Q2_K: [(80, False), (82, False)],  # d, dmin after scales[16] and qs[64]
    T.Q3_K: [(108, True)],  # d after hmask[32], qs[64], scales[12]
}
KQ_ROWS, KQ_COLS = 3, 512


def random_blocks(rng, qtype):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = KQ_ROWS * KQ_COLS // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off, signed in KQ_SCALES[qtype]:
        # log-uniform magnitude in [1e-3, 1e-1] so no raw-byte scale is NaN/inf or huge.
        mag = 10.0 ** rng.uniform(-3, -1, size=n_blocks)
        sign = rng.choice([-1.0, 1.0], size=n_blocks) if signed else 1.0
        blocks[:, off:off + 2] = (mag * sign).astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(KQ_ROWS, -1)  # byte shape [rows, bytes_per_row]


def write_kquants():
    rng = np.random.default_rng(20240601)
    w = gguf.GGUFWriter(KQ, "kquants-test")
    refs = {}
    for qtype in KQ_SCALES:
        data = random_blocks(rng, qtype)
        ref = dequantize(data, qtype).astype(np.float32)
        assert ref.shape == (KQ_ROWS, KQ_COLS) and np.isfinite(ref).all(), qtype.name
        name = qtype.name.lower()
        w.add_tensor(name, data, raw_dtype=qtype)  # uint8 byte shape -> element shape [3, 512]
        w.add_tensor(f"{name}.ref", ref)
        refs[name] = ref
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return refs


def as_f32(t):
    """Dequantize a ReaderTensor to float32 in numpy (row-major, HF) order."""
    return dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))


def dump(path):
    r = gguf.GGUFReader(path)
    print(f"\n{path.relative_to(ROOT)}: {path.stat().st_size} bytes, {len(r.fields)} kv, {len(r.tensors)} tensors")
    for f in r.fields.values():
        if not f.name.startswith("GGUF."):
            sub = f"[{gguf.GGUFValueType(f.types[-1]).name}]" if len(f.types) > 1 else ""
            print(f"  kv {f.name}: {f.types[0].name}{sub}")
    for t in r.tensors:
        print(f"  {t.name:28s} {t.tensor_type.name:5s} ne={list(map(int, t.shape))}")
    return r


def verify(weights, names, refs):
    r = dump(TINY)
    got = {t.name: t for t in r.tensors}
    assert "output.weight" not in got and len(got) == len(weights)
    for hf_name, bits in weights.items():
        t = got[names.get_name(hf_name, try_suffixes=(".weight",))]
        want = bf16_to_f32(bits)
        # Compare bit patterns: exact, and NaN/-0.0 safe.
        assert np.array_equal(as_f32(t).view(np.uint32), want.view(np.uint32)), t.name
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 151936
    assert bytes(tokens.parts[tokens.data[151643]]).decode() == "<|endoftext|>"
    assert bytes(tokens.parts[tokens.data[-1]]).decode() == "[PAD151935]"
    print("  tiny: all tensors equal safetensors bf16 widened to f32")

    r = dump(KQ)
    got = {t.name: t for t in r.tensors}
    for name, ref in refs.items():
        back = as_f32(got[f"{name}.ref"])
        assert np.isfinite(back).all() and np.array_equal(back, ref), name
        assert np.array_equal(as_f32(got[name]), ref), name  # read-back bytes dequantize the same
    print("  kquants: refs finite and match dequantized read-back bytes")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    weights, names = write_tiny()
    refs = write_kquants()
    verify(weights, names, refs)
