#!/usr/bin/env python3
"""Times PyTorch training steps of a Borealis model config on the CPU or a GPU.

The model is the plain PyTorch implementation of tests/model/torch_reference.py
(the one the parity test checks against Borealis), written as PyTorch users
write it: F.linear, F.layer_norm, F.cross_entropy, autograd,
torch.nn.utils.clip_grad_norm_ and torch.optim.AdamW. One step is what
`borealis bench train` times: zero_grad, forward with the mean loss,
backward, clipping to norm 1 and an AdamW update (betas 0.9/0.95, eps 1e-8,
weight decay 0.1 on matrices) with the same learning-rate schedule.

  --device cpu (default): float32, matmul + masked softmax attention,
      AdamW foreach, with --threads threads.
  --device cuda: as GPU users write it: fp32 weights on the GPU,
      F.scaled_dot_product_attention(is_causal=True) (FlashAttention where
      PyTorch has it), AdamW fused; with --precision bf16, the forward under
      torch.autocast(bfloat16) (bf16 matmuls, fp32 weights and optimizer
      state: the mixed precision of Borealis's train.precision = "bf16").
      Each phase's time is read after torch.cuda.synchronize().

  python3 bench/torch_train_step.py --config-json '{...}' | @FILE \
      [--batch 4] [--seq 256] [--steps 3] [--threads 2] [--device cpu|cuda]
      [--precision fp32|bf16]

--config-json takes Borealis's JSON form of a model config
(model_config_to_json; bench/train_vs_torch passes it for a preset), or
@FILE: a file holding it, or the output of `borealis bench train --json`
(its "model_config").
Prints one JSON object: per-step seconds (forward, backward, optimizer),
mean and best step, tokens/s and the loss.
"""

import argparse
import contextlib
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "model"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_reference as ref  # noqa: E402


class SdpaModel(ref.Model):
    """The reference model with PyTorch's fused causal attention, its inputs in
    `dtype` (under bf16 autocast, RoPE's float32 tables leave q and k in
    float32; the fused kernels take all three in bf16)."""

    def __init__(self, cfg, params, dtype):
        super().__init__(cfg, params)
        self.dtype = dtype

    def attend(self, q, k, v):
        q, k, v = q.to(self.dtype), k.to(self.dtype), v.to(self.dtype)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def read_config(arg):
    """--config-json: the JSON itself, or @FILE (a config, or a bench's output)."""
    if arg.startswith("@"):
        with open(arg[1:]) as f:
            arg = f.read()
    d = json.loads(arg)
    return d.get("model_config", d)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-json", required=True,
                    help="model config as Borealis's JSON, or @FILE holding it")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="measured steps, after one warm-up step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: the forward under torch.autocast(bfloat16) (--device cuda)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    cfg = ref.Config(read_config(args.config_json))
    if not 0 < args.seq <= cfg.max_seq:
        sys.exit(f"error: --seq must be in 1..{cfg.max_seq} for {cfg.name}")
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        sys.exit("error: --device cuda: PyTorch sees no CUDA device")
    if args.precision == "bf16" and not gpu:
        sys.exit("error: --precision bf16 is for --device cuda")
    sdpa = gpu and hasattr(F, "scaled_dot_product_attention")
    device = torch.device(args.device)
    params = {n: t.detach().to(device).requires_grad_()
              for n, t in ref.init_params(cfg, torch.float32, args.seed).items()}
    bf16 = args.precision == "bf16"
    model = (SdpaModel(cfg, params, torch.bfloat16 if bf16 else torch.float32) if sdpa
             else ref.Model(cfg, params))
    adamw = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}
    schedule = {"decay": "cosine", "lr_max": 3e-4, "lr_min": 0.0, "warmup_steps": 1,
                "total_steps": args.steps + 1, "decay_steps": 0}
    opt = ref.make_optimizer(params, adamw, lr=schedule["lr_max"], fused=gpu)
    plist = list(params.values())

    def autocast():
        if bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def now():
        if gpu:
            torch.cuda.synchronize()
        return time.perf_counter()

    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.vocab_size, (args.batch * args.seq + 1,), generator=g)
    tokens = ids[:-1].view(args.batch, args.seq).to(device)
    targets = ids[1:].view(args.batch, args.seq).to(device)

    steps = []
    for step in range(args.steps + 1):
        t0 = now()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = model.loss(tokens, targets)
        t1 = now()
        loss.backward()
        t2 = now()
        torch.nn.utils.clip_grad_norm_(plist, 1.0)
        lr = ref.schedule_lr(schedule, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        t3 = now()
        steps.append({"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2,
                      "total_s": t3 - t0, "loss": loss.item()})
    measured = steps[1:]
    mean = sum(s["total_s"] for s in measured) / len(measured)
    best = min(s["total_s"] for s in measured)
    tokens_per_step = args.batch * args.seq
    print(json.dumps({
        "torch": torch.__version__,
        "model": cfg.name,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "precision": args.precision,
        "attention": "scaled_dot_product_attention" if sdpa else "matmul + masked softmax",
        "optimizer": "AdamW fused" if gpu else "AdamW foreach",
        "batch": args.batch,
        "seq": args.seq,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in plist),
        "warmup": steps[0],
        "steps": measured,
        "mean_step_s": mean,
        "best_step_s": best,
        "tokens_per_s_mean": tokens_per_step / mean,
        "tokens_per_s_best": tokens_per_step / best,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "gpu_max_allocated_bytes": torch.cuda.max_memory_allocated() if gpu else 0,
    }))


if __name__ == "__main__":
    main()
