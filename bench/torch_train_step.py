#!/usr/bin/env python3
"""Times PyTorch training steps of a Borealis model config on the CPU.

The model is the plain PyTorch implementation of tests/model/torch_reference.py
(the one the parity test checks against Borealis), in float32, written as
PyTorch users write it: F.linear, F.layer_norm, matmul + masked softmax
attention, F.cross_entropy, autograd, torch.nn.utils.clip_grad_norm_ and
torch.optim.AdamW (foreach). One step is what `borealis bench train` times:
zero_grad, forward with the mean loss, backward, clipping to norm 1 and an
AdamW update (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices) with
the same learning-rate schedule.

  /usr/bin/python3 bench/torch_train_step.py --config-json '{...}' \
      [--batch 4] [--seq 256] [--steps 3] [--threads 2]

--config-json takes Borealis's JSON form of a model config
(model_config_to_json; bench/train_vs_torch passes it for a preset).
Prints one JSON object: per-step seconds (forward, backward, optimizer),
mean and best step, tokens/s and the loss.
"""

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "model"))

import torch  # noqa: E402

import torch_reference as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-json", required=True, help="model config as Borealis's JSON")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="measured steps, after one warm-up step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    cfg = ref.Config(json.loads(args.config_json))
    if not 0 < args.seq <= cfg.max_seq:
        sys.exit(f"error: --seq must be in 1..{cfg.max_seq} for {cfg.name}")
    params = ref.init_params(cfg, torch.float32, args.seed)
    model = ref.Model(cfg, params)
    adamw = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}
    schedule = {"decay": "cosine", "lr_max": 3e-4, "lr_min": 0.0, "warmup_steps": 1,
                "total_steps": args.steps + 1, "decay_steps": 0}
    opt = ref.make_optimizer(params, adamw, lr=schedule["lr_max"])
    plist = list(params.values())

    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.vocab_size, (args.batch * args.seq + 1,), generator=g)
    tokens = ids[:-1].view(args.batch, args.seq)
    targets = ids[1:].view(args.batch, args.seq)

    steps = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model.loss(tokens, targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(plist, 1.0)
        lr = ref.schedule_lr(schedule, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        t3 = time.perf_counter()
        steps.append({"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2,
                      "total_s": t3 - t0, "loss": loss.item()})
    measured = steps[1:]
    mean = sum(s["total_s"] for s in measured) / len(measured)
    best = min(s["total_s"] for s in measured)
    tokens_per_step = args.batch * args.seq
    print(json.dumps({
        "torch": torch.__version__,
        "model": cfg.name,
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
    }))


if __name__ == "__main__":
    main()
