#!/usr/bin/env python3
"""Times greedy decoding with a key/value cache in PyTorch on the CPU.

The baseline of `generate_bench --vs-torch`: the model of
tests/model/torch_reference.py (random weights of a Borealis preset, float32),
with the cache written as PyTorch users write it: each step runs one token
through the layers, appends its keys and values to per-layer tensors
(torch.cat) and attends over them (matmul, masked softmax, matmul: this Debian PyTorch has
no scaled_dot_product_attention); the
next token is the argmax of the last logits. Under torch.inference_mode.

  /usr/bin/python3 bench/torch_decode.py --config-json '{...}' \
      [--prompt 64] [--tokens 64] [--threads 1] [--repeats 2]

Prints one JSON object: prefill and decode tokens/s (best and mean of the
repeats) and the threads used.
"""

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "model"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torch_reference import Config, Model, init_params, rope_tables, rotate_half  # noqa: E402


class CachedModel(Model):
    """torch_reference's Model (its norm, linear and MLP) with a cached forward."""

    def __init__(self, cfg, params):
        super().__init__(cfg, {k: v.detach() for k, v in params.items()})
        self.cos, self.sin = rope_tables(cfg, cfg.max_seq, torch.float32)

    def forward(self, tokens, cache, pos):
        """tokens [T] at positions pos..pos+T-1; returns the last logits."""
        cfg = self.cfg
        NH, NKV, HD = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        T = tokens.shape[0]
        x = self.p["wte"][tokens]
        if cfg.gpt2:
            x = x + self.p["wpe"][pos:pos + T]
        x = x[None]
        for l in range(cfg.n_layer):
            h = self.norm(x, f"h.{l}.ln1")
            q, k, v = self.linear(h, f"h.{l}.attn.qkv").split([NH * HD, NKV * HD, NKV * HD], -1)
            q = q.view(1, T, NH, HD).transpose(1, 2)
            k = k.view(1, T, NKV, HD).transpose(1, 2)
            v = v.view(1, T, NKV, HD).transpose(1, 2)
            if not cfg.gpt2:
                cos, sin = self.cos[pos:pos + T], self.sin[pos:pos + T]
                q = q * cos + rotate_half(q) * sin
                k = k * cos + rotate_half(k) * sin
            if cache[l] is not None:
                k = torch.cat([cache[l][0], k], dim=2)
                v = torch.cat([cache[l][1], v], dim=2)
            cache[l] = (k, v)
            if NKV != NH:
                k = k.repeat_interleave(NH // NKV, dim=1)
                v = v.repeat_interleave(NH // NKV, dim=1)
            # Causal within the new rows; every cached row is visible.
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HD))
            if T > 1:
                S = k.shape[2]
                mask = torch.arange(S)[None, :] > (pos + torch.arange(T))[:, None]
                att = att.masked_fill(mask, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
            x = x + self.linear(y.transpose(1, 2).reshape(1, T, NH * HD), f"h.{l}.attn.proj")
            x = x + self.mlp(self.norm(x, f"h.{l}.ln2"), l)
        x = self.norm(x[:, -1], "lnf")
        head = self.p["wte"] if cfg.tied else self.p["lm_head.w"]
        return F.linear(x, head)[0, :cfg.vocab_size]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = Config(json.loads(a.config_json))
    model = CachedModel(cfg, init_params(cfg))
    g = torch.Generator().manual_seed(3)
    prefill, decode = [], []
    with torch.inference_mode():
        for _ in range(a.repeats):
            prompt = torch.randint(0, cfg.vocab_size, (a.prompt,), generator=g)
            cache = [None] * cfg.n_layer
            t0 = time.perf_counter()
            logits = model.forward(prompt, cache, 0)
            t1 = time.perf_counter()
            pos = a.prompt
            for _ in range(a.tokens):
                nxt = torch.argmax(logits).reshape(1)
                logits = model.forward(nxt, cache, pos)
                pos += 1
            t2 = time.perf_counter()
            prefill.append(a.prompt / (t1 - t0))
            decode.append(a.tokens / (t2 - t1))
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "prefill_tps_best": max(prefill), "prefill_tps_mean": sum(prefill) / len(prefill),
                      "decode_tps_best": max(decode), "decode_tps_mean": sum(decode) / len(decode)}))


if __name__ == "__main__":
    main()
