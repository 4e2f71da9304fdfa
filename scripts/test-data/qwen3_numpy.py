"""A plain numpy Qwen3 forward pass (float64), written from the Qwen3 architecture as
transformers describes it, separately from the engine: the independent reference for the
embedding and rerank fixtures. No KV cache, no batching: one sequence, every position.

    x = embed[ids]
    per layer:  h = rms(x) ; q,k = rms_head(h Wq), rms_head(h Wk) ; RoPE (rotate-half) ;
                x += softmax_causal(q k^T / sqrt(d)) v Wo      (GQA: kv head = q head // group)
                h = rms(x) ; x += (silu(h Wg) * (h Wu)) Wd
    hidden = rms_final(x) ; logits = hidden lm_head^T
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor as float64 (BF16, F16, F32; numpy has no bfloat16: its bits are the top half
    of a float32's)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = body[a:b]
        if t["dtype"] == "BF16":
            x = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] == "F16":
            x = np.frombuffer(raw, "<f2")
        elif t["dtype"] == "F32":
            x = np.frombuffer(raw, "<f4")
        else:
            raise ValueError(f"{path}: {name} has dtype {t['dtype']}")
        out[name] = x.astype(np.float64).reshape(t["shape"])
    return out


class Qwen3:
    def __init__(self, folder: Path):
        self.cfg = json.loads((folder / "config.json").read_text())
        raw = read_safetensors(folder / "model.safetensors")
        # Qwen3-Embedding checkpoints drop the "model." prefix (saved from Qwen3Model).
        self.w = {(k if k.startswith("model.") or k == "lm_head.weight" else "model." + k): v for k, v in raw.items()}
        c = self.cfg
        self.hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        self.eps = c["rms_norm_eps"]
        theta = c.get("rope_theta") or c["rope_parameters"]["rope_theta"]
        self.inv_freq = 1.0 / theta ** (np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)

    def _rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def _rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        # x [T, heads, hd]; rotate_half pairs i with i + hd/2
        half = self.hd // 2
        x1, x2 = x[..., :half], x[..., half:]
        rot = np.concatenate([-x2, x1], -1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    def hidden(self, ids: list[int]) -> np.ndarray:
        """Final-normed hidden states [T, hidden] of every position."""
        c, w, hd = self.cfg, self.w, self.hd
        nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
        t = len(ids)
        x = w["model.embed_tokens.weight"][ids]
        ang = np.arange(t, dtype=np.float64)[:, None] * self.inv_freq[None, :]
        ang = np.concatenate([ang, ang], -1)
        cos, sin = np.cos(ang), np.sin(ang)
        mask = np.triu(np.full((t, t), -np.inf), 1)
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self._rms(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, nh, hd)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, nkv, hd)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, nkv, hd)
            q = self._rope(self._rms(q, w[p + "self_attn.q_norm.weight"]), cos, sin)
            k = self._rope(self._rms(k, w[p + "self_attn.k_norm.weight"]), cos, sin)
            out = np.empty((t, nh, hd))
            for head in range(nh):
                kh = head // (nh // nkv)
                s = q[:, head, :] @ k[:, kh, :].T / np.sqrt(hd) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                out[:, head, :] = (s / s.sum(-1, keepdims=True)) @ v[:, kh, :]
            x = x + out.reshape(t, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
            h = self._rms(x, w[p + "post_attention_layernorm.weight"])
            g = h @ w[p + "mlp.gate_proj.weight"].T
            u = h @ w[p + "mlp.up_proj.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
        return self._rms(x, w["model.norm.weight"])

    def last_logits(self, ids: list[int]) -> np.ndarray:
        head = self.w.get("lm_head.weight") if not self.cfg.get("tie_word_embeddings") else None
        head = self.w["model.embed_tokens.weight"] if head is None else head
        return self.hidden(ids)[-1] @ head.T
