#!/usr/bin/env python3
"""A Qwen3-shaped GGUF with llama.cpp's Q4_K_M type mix and random *valid* blocks, for measuring
load, memory, prefill and decode at sizes this repository cannot download (speed depends on
shapes and types, not values). Both engines read it: llama.cpp (node-llama-cpp) and ours.

    pip install -r scripts/test-data/requirements.txt
    python3 scripts/make-synthetic-kquant-gguf.py --shape 8b [--layers N] [--out FILE]

Shapes (Hugging Face configs of the Qwen3 releases): 0.6b, 4b, 8b. `--layers N` keeps the first N
layers (the file then says N: a shorter model of the same widths, for machines short of memory).
Types as llama.cpp's Q4_K_M picks them: Q4_K everywhere, Q6_K for the output matrix and for
attn_v / ffn_down in its "more bits" layers (the first and last eighth, and every third between);
norms in F32; the real Qwen3 tokenizer (vocab padded to the embedding rows, as converters do).
Tensors are written one at a time (peak memory: the largest tensor, not the file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T

sys.path.insert(0, str(Path(__file__).resolve().parent / "test-data"))
from write_qwen2_fixtures import calibrate_kscale, find_tokenizer_dir, random_kquant  # noqa: E402

SHAPES = {
    # layers, hidden, heads, kv heads, head_dim, ffn, tied embeddings
    "0.6b": (28, 1024, 16, 8, 128, 3072, True),
    "4b": (36, 2560, 32, 8, 128, 9728, True),
    "8b": (36, 4096, 32, 8, 128, 12288, False),
}
VOCAB = 151936
SEED = 20261208


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the layers whose attn_v / ffn_down Q4_K_M keeps in Q6_K."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tokenizer(tok_dir: Path):
    tj = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    names = [f"[PAD{i}]" for i in range(VOCAB)]
    types = [gguf.TokenType.UNUSED] * VOCAB
    for tok, i in tj["model"]["vocab"].items():
        names[i], types[i] = tok, gguf.TokenType.NORMAL
    for a in tj["added_tokens"]:
        names[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    ids = {a["content"]: a["id"] for a in tj["added_tokens"]}
    return names, types, merges, cfg.get("chat_template", ""), ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--out")
    ap.add_argument("--tokenizer-dir")
    a = ap.parse_args()
    n_layer, hidden, heads, kv, hd, ffn, tied = SHAPES[a.shape]
    if a.layers is not None:
        if not 1 <= a.layers <= n_layer:
            sys.exit(f"--layers {a.layers}: allowed 1..{n_layer} for {a.shape}")
        n_layer = a.layers
    out = Path(a.out or f".bench-models/qwen3-{a.shape}{'' if a.layers is None else f'-{n_layer}l'}-synthetic-Q4_K_M.gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    scale = {t: calibrate_kscale(t) for t in (T.Q4_K, T.Q6_K)}

    # (name, shape as [rows, cols] or [n], type); matrices are [out features, in features].
    tensors: list[tuple[str, list[int], T]] = [("token_embd.weight", [VOCAB, hidden], T.Q4_K)]
    for i in range(n_layer):
        b = f"blk.{i}."
        big = T.Q6_K if more_bits(i, n_layer) else T.Q4_K
        tensors += [
            (b + "attn_norm.weight", [hidden], T.F32),
            (b + "attn_q.weight", [heads * hd, hidden], T.Q4_K),
            (b + "attn_k.weight", [kv * hd, hidden], T.Q4_K),
            (b + "attn_v.weight", [kv * hd, hidden], big),
            (b + "attn_q_norm.weight", [hd], T.F32),
            (b + "attn_k_norm.weight", [hd], T.F32),
            (b + "attn_output.weight", [hidden, heads * hd], T.Q4_K),
            (b + "ffn_norm.weight", [hidden], T.F32),
            (b + "ffn_gate.weight", [ffn, hidden], T.Q4_K),
            (b + "ffn_up.weight", [ffn, hidden], T.Q4_K),
            (b + "ffn_down.weight", [hidden, ffn], big),
        ]
    tensors.append(("output_norm.weight", [hidden], T.F32))
    if not tied:
        tensors.append(("output.weight", [VOCAB, hidden], T.Q6_K))

    names, types, merges, template, ids = tokenizer(find_tokenizer_dir(a.tokenizer_dir))
    w = gguf.GGUFWriter(str(out), "qwen3")
    w.add_name(f"Qwen3 {a.shape} shapes, random Q4_K_M blocks ({n_layer} layers)")
    w.add_context_length(40960)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_block_count(n_layer)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_K_M))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(names)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(ids["<|im_end|>"])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_bos_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(template)

    def data(shape: list[int], t: T) -> np.ndarray:
        if t == T.F32:
            return (1.0 + 0.05 * rng.standard_normal(shape[0])).astype(np.float32)
        return random_kquant(rng, t, shape[0], shape[1], scale[t])

    for name, shape, t in tensors:
        if t == T.F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), shape[0] * 4)
        else:
            elems, nbytes = gguf.GGML_QUANT_SIZES[t]
            row = shape[1] // elems * nbytes
            w.add_tensor_info(name, [shape[0], row], np.dtype(np.uint8), shape[0] * row, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = len(tensors)
    for k, (name, shape, t) in enumerate(tensors):
        w.write_tensor_data(data(shape, t))
        if sys.stderr.isatty() or (k + 1) % max(1, total // 10) == 0:
            print(f"\r{k + 1}/{total} tensors", end="" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)
    w.close()
    print(f"\n{out}: {out.stat().st_size / 1e9:.2f} GB, {n_layer} layers, hidden {hidden}, ffn {ffn}", file=sys.stderr)


if __name__ == "__main__":
    main()
