#!/usr/bin/env python3
"""llmc_compare: Borealis's GPT-2 training step beside llm.c's CPU trainer, in one run.

    python3 bench/llmc_compare.py --llmc LLM_C_SOURCE_DIR [--threads 2] [--steps 10]
        [--borealis build/release/src/borealis]

llm.c (github.com/karpathy/llm.c) trains GPT-2 124M on the CPU in plain C
with OpenMP: `train_gpt2.c`, batch 4 x 64 tokens, AdamW, its step time
printed per step. This script copies `train_gpt2.c` and `llmc/` from the
given source tree into a temporary folder (nothing of it is kept), builds it
as llm.c's Makefile does (`-Ofast -march=native -fopenmp -DOMP`), and gives
it what it reads:
  gpt2_124M.bin   llm.c's checkpoint layout (magic 20240326, version 3),
                  GPT-2 124M shapes (vocabulary 50257 padded to 50304, 12
                  layers, 12 heads, 768 wide, 1024 positions), weights from
                  N(0, 0.02) (a block of 2^20 draws, repeated), norms 1,
                  biases 0: random, as no pretrained weights can be had here,
                  and the step time does not depend on them;
  dev/data/tinyshakespeare/tiny_shakespeare_{train,val}.bin
                  llm.c's token files (magic 20240520, version 1, uint16
                  ids): the Brown corpus in the GPT-2 tokenizer, encoded by
                  `borealis tokenizer encode`.
llm.c runs unmodified with OMP_NUM_THREADS=--threads; the script reads its
"step N: ... (took X ms)" lines and stops it after --steps steps (before its
sampling at step 20). Step 0 is llm.c's first, which allocates its buffers:
it is left out, as Borealis's bench leaves out its first step.

Borealis: `borealis --threads T bench train --model gpt2-124m --batch 4
--seq-len 64 --steps N --json` (the same model, 124,475,904 parameters, the
same forward, backward and AdamW update per step).

Prints both mean step times, tokens/s, and the ratio. Figures only; run it
on an otherwise idle machine.
"""

import argparse
import array
import json
import random
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
B, T = 4, 64  # llm.c's train_gpt2.c
V, VP, L, NH, C, MAXT = 50257, 50304, 12, 12, 768, 1024


def die(msg):
    sys.exit(f"llmc_compare: {msg}")


def write_checkpoint(path):
    sizes = [VP * C, MAXT * C, L * C, L * C, L * 3 * C * C, L * 3 * C, L * C * C, L * C,
             L * C, L * C, L * 4 * C * C, L * 4 * C, L * C * 4 * C, L * C, C, C]
    # Norm weights are 1, biases 0, the rest N(0, 0.02).
    ones = {2, 8, 14}
    zeros = {3, 5, 7, 9, 11, 13, 15}
    rng = random.Random(1234)
    block = array.array("f", (rng.gauss(0, 0.02) for _ in range(1 << 20))).tobytes()
    with open(path, "wb") as f:
        f.write(array.array("i", [20240326, 3, MAXT, V, L, NH, C, VP] + [0] * 248).tobytes())
        for i, n in enumerate(sizes):
            if i in ones or i in zeros:
                f.write(array.array("f", [1.0 if i in ones else 0.0]).tobytes() * n)
                continue
            whole, rest = divmod(4 * n, len(block))
            f.write(block * whole + block[:rest])
    return sum(sizes)


def write_tokens(path, ids):
    with open(path, "wb") as f:
        f.write(array.array("i", [20240520, 1, len(ids)] + [0] * 253).tobytes())
        f.write(ids.tobytes())


def brown_ids(borealis, work):
    brown = ROOT / "data/brown/brown.jsonl"
    tok = ROOT / "data/tokenizers/gpt2.json"
    if not brown.exists() or not tok.exists():
        die("needs data/brown/brown.jsonl and data/tokenizers/gpt2.json "
            "(scripts/get-brown.sh, scripts/get-tokenizers.sh)")
    text = "\n\n".join(json.loads(line)["text"] for line in brown.read_text().splitlines())
    (work / "brown.txt").write_text(text)
    out = work / "brown.u16"
    with open(out, "wb") as f:
        subprocess.run([borealis, "tokenizer", "encode", "-t", tok, "-i", work / "brown.txt",
                        "-f", "u16"], stdout=f, check=True)
    ids = array.array("H")
    ids.frombytes(out.read_bytes())
    return ids


def build_llmc(src, work):
    for need in ["train_gpt2.c", "llmc"]:
        if not (src / need).exists():
            die(f"{src} has no {need}: pass a checkout of github.com/karpathy/llm.c")
    shutil.copy(src / "train_gpt2.c", work / "train_gpt2.c")
    shutil.copytree(src / "llmc", work / "llmc")
    cmd = ["gcc", "-Ofast", "-Wno-unused-result", "-Wno-ignored-pragmas",
           "-Wno-unknown-attributes", "-march=native", "-fopenmp", "-DOMP", "train_gpt2.c",
           "-lm", "-lgomp", "-o", "train_gpt2"]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if p.returncode != 0:
        die(f"building llm.c failed:\n{' '.join(cmd)}\n{p.stderr}")
    return " ".join(cmd)


def run_llmc(work, threads, steps):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(["./train_gpt2"], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    times = {}
    pattern = re.compile(r"^step (\d+): train loss ([0-9.naninf-]+) \(took ([0-9.]+) ms\)")
    deadline = time.monotonic() + 60 * 60
    try:
        for line in proc.stdout:
            m = pattern.match(line)
            if m:
                step = int(m.group(1))
                times[step] = float(m.group(3)) / 1000
                print(f"  llm.c step {step}: {times[step]:.3f} s (loss {m.group(2)})", flush=True)
                if step >= steps:
                    break
            if time.monotonic() > deadline:
                die("llm.c took over an hour")
    finally:
        proc.kill()
        proc.wait()
    if len(times) <= steps:
        die(f"llm.c printed {len(times)} step lines, expected {steps + 1}")
    return [times[s] for s in range(1, steps + 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llmc", required=True, type=Path, help="llm.c source tree")
    ap.add_argument("--borealis", default=str(ROOT / "build/release/src/borealis"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each (at most 19)")
    a = ap.parse_args()
    if not 1 <= a.steps <= 19:
        die("--steps must be 1 to 19 (llm.c samples text at step 20)")
    if not Path(a.borealis).exists():
        die(f"{a.borealis} not found: build it first (cmake --build --preset release)")

    with tempfile.TemporaryDirectory(prefix="borealis-llmc-") as tmp:
        work = Path(tmp)
        cmd = build_llmc(a.llmc.resolve(), work)
        print(f"llmc_compare: built llm.c: {cmd}")
        n = write_checkpoint(work / "gpt2_124M.bin")
        ids = brown_ids(a.borealis, work)
        data = work / "dev/data/tinyshakespeare"
        data.mkdir(parents=True)
        cut = len(ids) * 9 // 10
        write_tokens(data / "tiny_shakespeare_train.bin", ids[:cut])
        write_tokens(data / "tiny_shakespeare_val.bin", ids[cut:])
        print(f"llmc_compare: GPT-2 124M ({n} parameters), {len(ids)} Brown tokens; "
              f"{a.threads} threads, B={B}, T={T}, steps 1-{a.steps}")

        load0 = os.getloadavg()[0]
        llmc = run_llmc(work, a.threads, a.steps)
        load1 = os.getloadavg()[0]
        p = subprocess.run([a.borealis, "--threads", str(a.threads), "bench", "train", "--model",
                            "gpt2-124m", "--batch", str(B), "--seq-len", str(T), "--steps",
                            str(a.steps), "--json"], capture_output=True, text=True)
        if p.returncode != 0:
            die(f"borealis bench train failed:\n{p.stderr}")
        bj = json.loads(p.stdout)

    if bj["params"] != n:
        die(f"parameter counts differ: Borealis {bj['params']}, llm.c {n}")
    llmc_mean = statistics.mean(llmc)
    bor_mean = bj["mean_step_s"]
    tokens = B * T
    print()
    print(f"{'':10} {'s/step mean':>12} {'best':>8} {'tokens/s':>9}")
    print(f"{'llm.c':10} {llmc_mean:12.3f} {min(llmc):8.3f} {tokens / llmc_mean:9.1f}")
    print(f"{'Borealis':10} {bor_mean:12.3f} {bj['best_step_s']:8.3f} {tokens / bor_mean:9.1f}")
    print(f"\nllmc_compare: Borealis / llm.c: {llmc_mean / bor_mean:.2f}x (mean steps), "
          f"{min(llmc) / bj['best_step_s']:.2f}x (best steps); Borealis MFU "
          f"{100 * bj['mfu']['mean']:.1f}% of {bj['peak_gflops']:.1f} GFLOP/s sgemm; "
          f"load average {load0:.1f} before llm.c, {load1:.1f} before Borealis")


if __name__ == "__main__":
    main()
