#!/usr/bin/env python3
"""A plain PyTorch implementation of Borealis's two model families.

Used twice: by the parity test (tests/model/torch_parity_test.cpp), which runs
this file as a script on weights and a batch that Borealis wrote, and by the
speed comparison (bench/torch_train_step.py), which imports the model.

The math is written from Borealis's definition (docs/engine.md,
src/model/model.cpp, src/kernels/cpu/) with ordinary PyTorch ops and autograd:

  gpt2:  x = wte[tok] + wpe[pos]; per block
           x += proj(attn(LayerNorm(x)));  x += mlp.proj(gelu_tanh(mlp.fc(LayerNorm(x))))
         LayerNorm(x) -> logits = x wte^T (tied)
  llama: x = wte[tok]; per block
           x += proj(attn(RMSNorm(x)));  x += mlp.proj(silu(gate) * up)
         RMSNorm(x) -> logits = x W^T (W = wte when tied, else lm_head.w)

  attention: causal softmax(q k^T / sqrt(head_dim)) v. q, k and v come from
             one packed projection, rows [q heads | k heads | v heads]; with
             grouped-query attention query head h reads kv head h // (NH/NKV).
  RoPE:      Llama only, on q and k; pairs (i, i + head_dim/2) rotate by
             pos * theta^(-2i/head_dim) (the "rotate half" convention).
  SwiGLU:    mlp.fc.w rows are [gate (d_ff) | up (d_ff)].
  loss:      cross-entropy over the real vocabulary only: the padded rows of
             the embedding / lm head (vocab_size..padded_vocab-1) take no part
             in the softmax, so their gradient is exactly zero.
  norms:     eps = norm_eps inside the square root, biased variance.

Weights carry Borealis's ParamLayout names and shapes ("wte", "wpe",
"h.0.ln1.w", "h.0.attn.qkv.w", ..., "lnf.w", "lm_head.w" when untied); a tied
lm head is the one "wte" tensor, so its gradient sums both uses.

As a script:  /usr/bin/python3 torch_reference.py JOB.json [JOB.json ...]
Each JOB.json names the model config (Borealis's JSON form), a weights file
(safetensors), the batch, AdamW settings, the LR schedule, the number of
steps and the clipping norm, and an output folder. The script computes, in
float64, the per-token losses and every gradient of the first step, then runs
the steps (forward, backward, clip_grad_norm_, torch.optim.AdamW with the
schedule's learning rate) and writes:
  OUT/grads.safetensors   gradients of the first step (before clipping)
  OUT/params.safetensors  parameters after the last step
  OUT/result.json         loss, per-token losses, and per step: loss,
                          gradient norm and learning rate
Safetensors files are read and written here by hand (8-byte little-endian
header length, JSON header, raw little-endian data), so only torch and numpy
are needed. Without them the script exits with status 3.
"""

import json
import math
import os
import struct
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the parity test tells this apart from a failure (exit status 3)
    print(f"torch_reference.py: {e} (Debian: apt-get install python3-torch python3-numpy)",
          file=sys.stderr)
    sys.exit(3)

# ---------------------------------------------------------------------------
# safetensors

_DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}


def read_safetensors(path):
    """Returns ({name: numpy array}, metadata dict)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError(f"{path}: header length {length} does not fit the file")
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__", {})
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        if count != math.prod(info["shape"]):
            raise ValueError(f"{path}: tensor {name} has a bad byte range")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=base + begin)
        tensors[name] = array.reshape(info["shape"]).astype(dtype.newbyteorder("="))
    return tensors, metadata


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor or array} as F32, in the given order."""
    header = {}
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        blob = np.ascontiguousarray(value, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# the model


class Config:
    """Borealis's ModelConfig, from its JSON form (model_config_to_json)."""

    def __init__(self, d):
        self.name = d["name"]
        self.family = d["family"]
        if self.family not in ("gpt2", "llama"):
            raise ValueError(f"unknown model family {self.family}")
        self.vocab_size = int(d["vocab_size"])
        self.padded_vocab = int(d["padded_vocab"])
        self.max_seq = int(d["max_seq"])
        self.n_layer = int(d["n_layer"])
        self.n_head = int(d["n_head"])
        self.n_kv_head = int(d["n_kv_head"])
        self.d_model = int(d["d_model"])
        self.d_ff = int(d["d_ff"])
        self.tied = bool(d["tied_embeddings"])
        self.norm_eps = float(d["norm_eps"])
        self.rope_theta = float(d["rope_theta"])
        self.head_dim = self.d_model // self.n_head

    @property
    def gpt2(self):
        return self.family == "gpt2"


def param_shapes(cfg):
    """Names and shapes in ParamLayout order."""
    C, V = cfg.d_model, cfg.padded_vocab
    qkv = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
    fc = cfg.d_ff if cfg.gpt2 else 2 * cfg.d_ff
    shapes = {"wte": (V, C)}
    if cfg.gpt2:
        shapes["wpe"] = (cfg.max_seq, C)
    for l in range(cfg.n_layer):
        p = f"h.{l}."
        block = [("ln1.w", (C,)), ("ln1.b", (C,)), ("attn.qkv.w", (qkv, C)), ("attn.qkv.b", (qkv,)),
                 ("attn.proj.w", (C, C)), ("attn.proj.b", (C,)), ("ln2.w", (C,)), ("ln2.b", (C,)),
                 ("mlp.fc.w", (fc, C)), ("mlp.fc.b", (fc,)), ("mlp.proj.w", (C, cfg.d_ff)),
                 ("mlp.proj.b", (C,))]
        for name, shape in block:
            if cfg.gpt2 or not name.endswith(".b"):
                shapes[p + name] = shape
    shapes["lnf.w"] = (C,)
    if cfg.gpt2:
        shapes["lnf.b"] = (C,)
    if not cfg.tied:
        shapes["lm_head.w"] = (V, C)
    return shapes


def init_params(cfg, dtype=torch.float32, seed=1):
    """GPT-2 style random weights (for timing; the parity test loads Borealis's)."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1:
            value = torch.ones(shape) if name.endswith(".w") else torch.zeros(shape)
        else:
            std = 0.02
            if name.endswith("proj.w"):
                std /= math.sqrt(2 * cfg.n_layer)
            value = torch.randn(shape, generator=g) * std
            if name in ("wte", "lm_head.w"):
                value[cfg.vocab_size:] = 0
        params[name] = value.to(dtype).requires_grad_()
    return params


def decays(name, tensor):
    """Weight decay for matrices only: not norms, biases or embeddings."""
    return tensor.dim() == 2 and name not in ("wte", "wpe")


def rope_tables(cfg, seq, dtype):
    """cos and sin, [seq, head_dim], each half repeated (angles in float64)."""
    half = cfg.head_dim // 2
    inv_freq = cfg.rope_theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / cfg.head_dim)
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w


class Model:
    """Forward pass over a dict of named parameter tensors."""

    def __init__(self, cfg, params):
        self.cfg = cfg
        self.p = params
        self._masks = {}
        self._rope = {}

    def norm(self, x, prefix):
        cfg = self.cfg
        if cfg.gpt2:
            return F.layer_norm(x, (cfg.d_model,), self.p[prefix + ".w"], self.p[prefix + ".b"],
                                cfg.norm_eps)
        return rms_norm(x, self.p[prefix + ".w"], cfg.norm_eps)

    def linear(self, x, prefix):
        return F.linear(x, self.p[prefix + ".w"], self.p.get(prefix + ".b"))

    def attention(self, x, l):
        cfg = self.cfg
        B, T, _ = x.shape
        NH, NKV, HD = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        qkv = self.linear(x, f"h.{l}.attn.qkv")
        q, k, v = qkv.split([NH * HD, NKV * HD, NKV * HD], dim=-1)
        q = q.view(B, T, NH, HD).transpose(1, 2)  # [B, NH, T, HD]
        k = k.view(B, T, NKV, HD).transpose(1, 2)
        v = v.view(B, T, NKV, HD).transpose(1, 2)
        if not cfg.gpt2:
            key = (T, x.dtype, x.device)
            if key not in self._rope:
                self._rope[key] = tuple(t.to(x.device) for t in rope_tables(cfg, T, x.dtype))
            cos, sin = self._rope[key]
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if NKV != NH:  # each kv head serves NH / NKV consecutive query heads
            group = NH // NKV
            k = k[:, :, None].expand(B, NKV, group, T, HD).reshape(B, NH, T, HD)
            v = v[:, :, None].expand(B, NKV, group, T, HD).reshape(B, NH, T, HD)
        y = self.attend(q, k, v).transpose(1, 2).reshape(B, T, NH * HD)
        return self.linear(y, f"h.{l}.attn.proj")

    def attend(self, q, k, v):
        """Causal softmax(q k^T / sqrt(head_dim)) v over [B, NH, T, HD]."""
        T, HD = q.shape[-2], q.shape[-1]
        if T not in self._masks:
            self._masks[T] = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HD))
        att = att.masked_fill(self._masks[T], float("-inf"))
        att = F.softmax(att, dim=-1)
        return att @ v

    def mlp(self, x, l):
        h = self.linear(x, f"h.{l}.mlp.fc")
        if self.cfg.gpt2:
            a = F.gelu(h, approximate="tanh")
        else:
            gate, up = h.chunk(2, dim=-1)
            a = F.silu(gate) * up
        return self.linear(a, f"h.{l}.mlp.proj")

    def losses(self, tokens, targets):
        """Per-token cross-entropy, [B*T], for tokens and targets [B, T] (int64)."""
        cfg = self.cfg
        B, T = tokens.shape
        x = F.embedding(tokens, self.p["wte"])
        if cfg.gpt2:
            x = x + self.p["wpe"][:T]
        for l in range(cfg.n_layer):
            x = x + self.attention(self.norm(x, f"h.{l}.ln1"), l)
            x = x + self.mlp(self.norm(x, f"h.{l}.ln2"), l)
        x = self.norm(x, "lnf")
        head = self.p["wte"] if cfg.tied else self.p["lm_head.w"]
        # Only the real vocabulary rows: the same as masking the padded logits.
        logits = F.linear(x, head[: cfg.vocab_size])
        return F.cross_entropy(logits.view(B * T, cfg.vocab_size), targets.reshape(B * T),
                               reduction="none")

    def loss(self, tokens, targets):
        return self.losses(tokens, targets).mean()


def make_optimizer(params, adamw, lr, fused=False):
    """torch.optim.AdamW with Borealis's default decay exclusions (fused: the
    one-kernel CUDA implementation, else foreach)."""
    decay = [t for n, t in params.items() if decays(n, t)]
    other = [t for n, t in params.items() if not decays(n, t)]
    groups = [{"params": decay, "weight_decay": adamw["weight_decay"]},
              {"params": other, "weight_decay": 0.0}]
    kwargs = dict(lr=lr, betas=(adamw["beta1"], adamw["beta2"]), eps=adamw["eps"])
    if fused:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    try:
        return torch.optim.AdamW(groups, foreach=True, **kwargs)
    except TypeError:  # torch without the foreach option
        return torch.optim.AdamW(groups, **kwargs)


def schedule_lr(s, step):
    """Borealis's LrSchedule::lr (src/optim/schedule.h), step counted from 0."""
    lr_max, lr_min = s["lr_max"], s["lr_min"]
    warmup, total = s["warmup_steps"], s["total_steps"]
    if step < warmup:
        return lr_max * (step + 1) / warmup
    step = min(step, total)
    decay = s["decay"]
    if decay == "constant":
        return lr_max
    if decay in ("cosine", "linear"):
        span = total - warmup
        frac = 1.0 if span == 0 else (step - warmup) / span
        k = 0.5 * (1.0 + math.cos(math.pi * frac)) if decay == "cosine" else 1.0 - frac
        return lr_min + (lr_max - lr_min) * k
    if decay == "wsd":
        start = total - s["decay_steps"]
        if step < start:
            return lr_max
        return lr_min + (lr_max - lr_min) * (1.0 - (step - start) / s["decay_steps"])
    raise ValueError(f"unknown schedule {decay}")


# ---------------------------------------------------------------------------
# the parity job


def run_job(job_path):
    with open(job_path) as f:
        job = json.load(f)
    torch.set_num_threads(1)
    dtype = torch.float64  # the reference: float32 rounding stays on Borealis's side
    cfg = Config(job["config"])
    weights, _ = read_safetensors(job["weights"])
    shapes = param_shapes(cfg)
    if set(weights) != set(shapes):
        raise ValueError(f"weights hold {sorted(weights)}, the model needs {sorted(shapes)}")
    params = {}
    for name, shape in shapes.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{name} has shape {weights[name].shape}, expected {shape}")
        params[name] = torch.from_numpy(weights[name]).to(dtype).requires_grad_()
    B, T = job["batch"], job["seq"]
    tokens = torch.tensor(job["tokens"], dtype=torch.int64).view(B, T)
    targets = torch.tensor(job["targets"], dtype=torch.int64).view(B, T)
    model = Model(cfg, params)
    opt = make_optimizer(params, job["adamw"], lr=job["schedule"]["lr_max"])
    result = {"step_losses": [], "grad_norms": [], "lrs": []}
    out = job["out"]
    for step in range(job["steps"]):
        opt.zero_grad(set_to_none=True)
        losses = model.losses(tokens, targets)
        loss = losses.mean()
        loss.backward()
        if step == 0:
            result["loss"] = loss.item()
            result["losses"] = losses.detach().tolist()
            write_safetensors(os.path.join(out, "grads.safetensors"),
                              {n: t.grad for n, t in params.items()})
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), job["max_norm"])
        lr = schedule_lr(job["schedule"], step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        result["step_losses"].append(loss.item())
        result["grad_norms"].append(float(norm))
        result["lrs"].append(lr)
    write_safetensors(os.path.join(out, "params.safetensors"), params)
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: torch_reference.py JOB.json [JOB.json ...]")
    for path in sys.argv[1:]:
        run_job(path)
