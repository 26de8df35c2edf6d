#!/usr/bin/env python3
"""robust_bench: what looking after a long run costs, on 2 data-parallel ranks.

    python3 bench/robust_bench.py [--borealis build/release/src/borealis]
        [--model gpt2-124m] [--seq-len 128] [--steps 16] [--every 8] [--repeat 2]

Trains the model (Brown corpus, GPT-2 tokenizer: scripts/get-brown.sh and
scripts/get-tokenizers.sh) with `borealis launch -n 2 --threads-per-rank 1`
in four configurations, run in turn `--repeat` times:
  base       no straggler reports, no checkpoint inside the timed steps
  telemetry  a straggler report after every step (dist.straggler_every = 1;
             the default is every 100 steps)
  async      a checkpoint every --every steps, written in the background
  sync       the same checkpoints, training waiting for each
and prints the wall time of the timed steps (steps 3..N from the run's
metrics.jsonl elapsed_s: everything between two step records counts,
checkpoint and gathers included), each configuration's best run against
base's best, and the cost per checkpoint.

Then one run with `launch --max-restarts 1` and checkpoints every 5 steps, in
which rank 1 is killed (SIGKILL) after step 12 is logged: it prints the time
from the kill until the restarted job has finished its first step, that step's
own time, and the work lost (steps computed twice).

Figures only; no pass/fail. Run it on an otherwise idle machine.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"robust_bench: {' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stderr}")
    return p


def records(run_dir):
    out = {}
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "train":
            out[rec["step"]] = rec
    return out


def config(work, name, a, every=0, async_write=True, straggler_every=0):
    run_dir = work / name
    cfg = work / f"{name}.toml"
    cfg.write_text(f"""
[model]
preset = "{a.model}"
[data]
data_list = "{work / 'list.txt'}"
tokenizer = "{ROOT / 'data/tokenizers/gpt2.json'}"
seq_len = {a.seq_len}
split = [100, 0, 0]
[train]
run_dir = "{run_dir}"
steps = {a.steps}
micro_batch = 1
global_batch = 2
peak_gflops = 1
log_every = 1000
[checkpoint]
every = {every}
keep = 1
async = {"true" if async_write else "false"}
[eval]
batches = 0
[dist]
straggler_every = {straggler_every}
""")
    return cfg, run_dir


def launch(a, cfg, restarts=None):
    cmd = [a.borealis, "launch", "-n", "2", "--threads-per-rank", "1"]
    if restarts is not None:
        cmd += ["--max-restarts", str(restarts), "--restart-delay", "0"]
    return cmd + ["--", a.borealis, "--log-level", "warn", "train", str(cfg)]


def timed_steps(run_dir, first, last):
    r = records(run_dir)
    return r[last]["elapsed_s"] - r[first]["elapsed_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--borealis", default=str(ROOT / "build/release/src/borealis"))
    ap.add_argument("--model", default="gpt2-124m")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")

    with tempfile.TemporaryDirectory(prefix="borealis-robust-bench-") as tmp:
        work = Path(tmp)
        sh([a.borealis, "--log-level", "warn", "data", "prepare", "-i",
            ROOT / "data/brown/brown.jsonl", "-t", ROOT / "data/tokenizers/gpt2.json", "-o",
            work / "brown", "--append-eod"])
        (work / "list.txt").write_text(f"1.0 {work / 'brown'}\n")
        variants = {
            "base": {},
            "telemetry": {"straggler_every": 1},
            "async": {"every": a.every, "async_write": True},
            "sync": {"every": a.every, "async_write": False},
        }
        times = {k: [] for k in variants}
        first = 2
        for rep in range(a.repeat):
            for name, settings in variants.items():
                cfg, run_dir = config(work, f"{name}{rep}", a, **settings)
                sh(launch(a, cfg))
                t = timed_steps(run_dir, first, a.steps)
                times[name].append(t)
                print(f"robust_bench: {name:9s} run {rep + 1}: steps {first + 1}-{a.steps} in "
                      f"{t:.2f} s ({t / (a.steps - first):.3f} s/step)", flush=True)
                sh(["rm", "-rf", run_dir])

        base = min(times["base"])
        n = a.steps - first
        print(f"\nrobust_bench: {a.model}, 2 ranks x 1 thread, global batch 2 x {a.seq_len} "
              f"tokens; steps {first + 1}-{a.steps} ({n} steps), best of {a.repeat}")
        print(f"{'configuration':>14s} {'s/step':>8s} {'vs base':>8s}")
        for name in variants:
            best = min(times[name])
            print(f"{name:>14s} {best / n:8.3f} {100 * (best / base - 1):+7.1f}%")
        inside = [s for s in range(a.every, a.steps + 1, a.every) if first < s < a.steps]
        for name in ("async", "sync"):
            per = (min(times[name]) - base) / max(1, len(inside))
            print(f"robust_bench: {name} checkpoint: {per:+.2f} s of training time each "
                  f"({len(inside)} inside the timed steps, every {a.every} steps)")
        spread = {k: (max(v) - min(v)) / min(v) * 100 for k, v in times.items()}
        print("robust_bench: run-to-run spread " +
              ", ".join(f"{k} {v:.1f}%" for k, v in spread.items()))

        # Restart after a rank's death.
        cfg, run_dir = config(work, "restart", a, every=5)
        proc = subprocess.Popen([str(c) for c in launch(a, cfg, restarts=1)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        kill_after = 12
        while max(records(run_dir), default=0) < kill_after:
            if proc.poll() is not None:
                sys.exit("robust_bench: the restart run ended early:\n" + proc.stderr.read())
            time.sleep(0.02)
        pid = None
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if str(cfg).encode() not in (d / "cmdline").read_bytes():
                    continue
                if b"OMPI_COMM_WORLD_RANK=1" in (d / "environ").read_bytes().split(b"\0"):
                    pid = int(d.name)
            except OSError:
                continue
        if pid is None:
            sys.exit("robust_bench: rank 1 not found")
        logged = max(records(run_dir))
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        # The first step record written after the kill (a step of the new job).
        mtime_seen = (run_dir / "metrics.jsonl").stat().st_size
        back = None
        resumed_step = None
        while proc.poll() is None or back is None:
            text = (run_dir / "metrics.jsonl").read_text()
            if len(text) > mtime_seen:
                for line in text[mtime_seen:].splitlines():
                    rec = json.loads(line) if line.strip() else {}
                    if rec.get("kind") == "run" and rec.get("event") == "resume":
                        resumed_step = rec["step"]
                    if rec.get("kind") == "train" and resumed_step is not None and back is None:
                        back = time.time() - killed_at
            if proc.poll() is not None and back is None:
                break
            time.sleep(0.02)
        out, err = proc.communicate()
        if proc.returncode != 0 or back is None:
            sys.exit(f"robust_bench: the restarted run failed ({proc.returncode}):\n{err}")
        step_s = statistics.median(
            r2["elapsed_s"] - r1["elapsed_s"]
            for r1, r2 in zip(list(records(run_dir).values())[2:], list(records(run_dir).values())[3:]))
        print(f"robust_bench: rank 1 killed after step {logged} was logged; the job restarted "
              f"from the checkpoint of step {resumed_step} and finished its first step "
              f"{back:.1f} s after the kill (one step takes {step_s:.2f} s: training again "
              f"{back - step_s:.1f} s after the kill); {logged - resumed_step} steps computed "
              f"twice")


if __name__ == "__main__":
    main()
