#!/usr/bin/env python3
"""GPT-2 and Llama in PyTorch, written from transformers' published module
layout (GPT2LMHeadModel, LlamaForCausalLM), loading a Hugging Face
directory that `borealis export hf` wrote.

Used by tests/interop/torch_hf_test.cpp: the modules below carry the
attribute names of transformers' modules, so load_state_dict(strict=True)
checks every tensor name and shape of the export, and their forward passes
follow transformers' math:

  GPT-2:  Conv1D weights are [in, out] (y = x W + b); c_attn's output is
          q | k | v; GELU is the tanh form ("gelu_new"); LayerNorm with
          layer_norm_epsilon; the head is tied to transformer.wte.
  Llama:  RMSNorm x * rsqrt(mean(x^2) + eps) * w; rotary embeddings with
          inv_freq = 1 / rope_theta^(2i/d) applied as q cos + rotate_half(q) sin
          (rotate_half(x) = [-x2, x1], halves of the head); grouped-query
          attention by repeat_kv (query head h reads kv head h // n_rep);
          MLP down(silu(gate(x)) * up(x)); lm_head, or embed_tokens when
          tie_word_embeddings.

Computation is float64, so the logits are the exact math of the exported
weights. Safetensors files (one, or shards by model.safetensors.index.json)
are parsed by hand: Debian has no python3-safetensors.

As a script:  /usr/bin/python3 torch_hf_reference.py JOB.json [JOB.json ...]
JOB.json: {"dir": HF directory, "tokens": [ids], "out": file}. Writes the
logits, [len(tokens), vocab_size] float64 little-endian, to "out". Exits with
status 3 when torch or numpy is missing.
"""

import json
import math
import os
import struct
import sys

try:
    import numpy as np
    import torch
    from torch import nn
except ImportError as e:  # the test tells this apart from a failure (exit status 3)
    print(f"torch_hf_reference.py: {e} (Debian: apt-get install python3-torch python3-numpy)",
          file=sys.stderr)
    sys.exit(3)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        raw = np.frombuffer(body[begin:end], dtype=np.uint8)
        if e["dtype"] == "F32":
            a = raw.view("<f4").astype(np.float64)
        elif e["dtype"] == "F16":
            a = raw.view("<f2").astype(np.float64)
        elif e["dtype"] == "BF16":  # the top half of a float32
            a = (raw.view("<u2").astype(np.uint32) << 16).view("<f4").astype(np.float64)
        else:
            raise ValueError(f"{path}: {name}: dtype {e['dtype']}")
        out[name] = torch.from_numpy(a.reshape(e["shape"]).copy())
    return out


def read_weights(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(os.path.join(d, "model.safetensors"))
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    weights = {}
    for name in files:
        weights.update(read_safetensors(os.path.join(d, name)))
    return weights


def causal_attention(q, k, v):
    """q [H, T, D], k and v [H, T, D] -> [T, H * D]."""
    T, D = q.shape[1], q.shape[2]
    scores = q @ k.transpose(1, 2) / math.sqrt(D)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    y = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v
    return y.transpose(0, 1).reshape(T, -1)


# ---- GPT-2 (transformers' modeling_gpt2 layout) ----

class Conv1D(nn.Module):
    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(nx, nf, dtype=torch.float64))
        self.bias = nn.Parameter(torch.empty(nf, dtype=torch.float64))

    def forward(self, x):
        return x @ self.weight + self.bias


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


class GPT2Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg["n_head"]
        C = cfg["n_embd"]
        self.c_attn = Conv1D(3 * C, C)
        self.c_proj = Conv1D(C, C)

    def forward(self, x):
        T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=1)
        heads = lambda t: t.view(T, self.n_head, C // self.n_head).transpose(0, 1)
        return self.c_proj(causal_attention(heads(q), heads(k), heads(v)))


class GPT2MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["n_embd"]
        inner = cfg.get("n_inner") or 4 * C
        self.c_fc = Conv1D(inner, C)
        self.c_proj = Conv1D(C, inner)

    def forward(self, x):
        return self.c_proj(gelu_new(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, eps = cfg["n_embd"], cfg["layer_norm_epsilon"]
        self.ln_1 = nn.LayerNorm(C, eps=eps, dtype=torch.float64)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(C, eps=eps, dtype=torch.float64)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["n_embd"]
        self.wte = nn.Embedding(cfg["vocab_size"], C, dtype=torch.float64)
        self.wpe = nn.Embedding(cfg["n_positions"], C, dtype=torch.float64)
        self.h = nn.ModuleList(GPT2Block(cfg) for _ in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(C, eps=cfg["layer_norm_epsilon"], dtype=torch.float64)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(len(ids)))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.transformer = GPT2Model(cfg)

    def forward(self, ids):  # lm_head tied to wte
        return self.transformer(ids) @ self.transformer.wte.weight.T


# ---- Llama (transformers' modeling_llama layout) ----

class LlamaRMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, dtype=torch.float64))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def linear(n_in, n_out):
    return nn.Linear(n_in, n_out, bias=False, dtype=torch.float64)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["hidden_size"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg.get("num_key_value_heads") or self.nh
        self.hd = cfg.get("head_dim") or C // self.nh
        self.theta = cfg.get("rope_theta", 10000.0)
        self.q_proj = linear(C, self.nh * self.hd)
        self.k_proj = linear(C, self.nkv * self.hd)
        self.v_proj = linear(C, self.nkv * self.hd)
        self.o_proj = linear(self.nh * self.hd, C)

    def forward(self, x):
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.nh, self.hd).transpose(0, 1)
        k = self.k_proj(x).view(T, self.nkv, self.hd).transpose(0, 1)
        v = self.v_proj(x).view(T, self.nkv, self.hd).transpose(0, 1)
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.hd, 2, dtype=torch.float64) / self.hd))
        freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        n_rep = self.nh // self.nkv  # repeat_kv
        k = k[:, None].expand(self.nkv, n_rep, T, self.hd).reshape(self.nh, T, self.hd)
        v = v[:, None].expand(self.nkv, n_rep, T, self.hd).reshape(self.nh, T, self.hd)
        return self.o_proj(causal_attention(q, k, v))


class LlamaMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, F = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = linear(C, F)
        self.up_proj = linear(C, F)
        self.down_proj = linear(F, C)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.input_layernorm = LlamaRMSNorm(C, eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = LlamaRMSNorm(C, eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["hidden_size"]
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], C, dtype=torch.float64)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = LlamaRMSNorm(C, cfg["rms_norm_eps"])

    def forward(self, ids):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.model = LlamaModel(cfg)
        self.tied = cfg.get("tie_word_embeddings", False)
        if not self.tied:
            self.lm_head = linear(cfg["hidden_size"], cfg["vocab_size"])

    def forward(self, ids):
        h = self.model(ids)
        return h @ self.model.embed_tokens.weight.T if self.tied else self.lm_head(h)


def run(job_path):
    with open(job_path) as f:
        job = json.load(f)
    with open(os.path.join(job["dir"], "config.json")) as f:
        cfg = json.load(f)
    arch = cfg["architectures"][0]
    model = {"GPT2LMHeadModel": GPT2LMHeadModel, "LlamaForCausalLM": LlamaForCausalLM}[arch](cfg)
    model.load_state_dict(read_weights(job["dir"]), strict=True)
    with torch.no_grad():
        logits = model(torch.tensor(job["tokens"], dtype=torch.long))
    logits.numpy().astype("<f8").tofile(job["out"])


if __name__ == "__main__":
    for path in sys.argv[1:]:
        run(path)
