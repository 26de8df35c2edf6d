#!/usr/bin/env python3
"""Counts the PTX instructions of the tensor-core attention kernels' loops.

Compiles the CUDA backend to PTX (nvcc -ptx, sm_90 by default) and prints, for
each kernel whose name matches --filter, the instructions of its loop over
tiles: those between the loop's label and its branch back, the loop being the
innermost one that holds every tensor-core product (wmma.mma) of the kernel.
Static counts, which say what one tile costs in instructions when the loops
inside it are unrolled (--unroll-columns unrolls a lane's 16-column loops
where the compiler left them rolled); not a measured speed.

  python3 bench/cuda_ptx_loops.py
  git show REV:src/kernels/cuda/cuda_backend.cu > /tmp/old.cu
  python3 bench/cuda_ptx_loops.py --unroll-columns /tmp/old.cu
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["wmma.mma", "wmma.load", "wmma.store", "ld.shared", "st.shared", "bar", "shfl", "ex2"]


def opcode(line):
    """The instruction's kind (wmma.X, ld.shared, ...), or None for a non-instruction."""
    line = line.strip()
    if not line or line.startswith(("//", ".", "{", "}")) or line.endswith(":"):
        return None
    op = re.sub(r"^@%?!?\w+\s+", "", line).split()[0].rstrip(";")
    base = op.split(".")[0]
    if op.startswith("wmma."):
        return ".".join(op.split(".")[:2])
    if base in ("ld", "st"):
        space = "shared" if ".shared" in op else "global" if ".global" in op else "other"
        return f"{base}.{space}"
    return base


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    result = []
    for name in out.stdout.splitlines():
        name = name.replace("borealis::(anonymous namespace)::", "").replace("__nv_bfloat16", "bf16")
        result.append(re.sub(r"\(.*", "", name).replace("void ", ""))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", default=os.path.join(ROOT, "src/kernels/cuda/cuda_backend.cu"))
    parser.add_argument("--nvcc", default="nvcc")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--filter", default=r"tc::.*<(64|128), bf16(, bf16, bf16)?>",
                        help="kernels to count (a regular expression on the demangled name)")
    parser.add_argument("--unroll-columns", action="store_true",
                        help="add #pragma unroll before each `for (int c = 0; c < 16; ++c)` loop")
    args = parser.parse_args()

    with open(args.source) as f:
        text = f.read()
    if args.unroll_columns:
        text = re.sub(r"(\n(\s*)for \(int c = 0; c < 16; \+\+c\))", r"\n\2#pragma unroll\1", text)
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "kernels.cu")
        ptx = os.path.join(tmp, "kernels.ptx")
        with open(source, "w") as f:
            f.write(text)
        cmd = [args.nvcc, "-std=c++17", "-O3", f"-arch={args.arch}", "-ptx", "-I", os.path.join(ROOT, "src"),
               "-DBOREALIS_HAVE_CUDA=1", "-DBOREALIS_HAVE_CUDA_KERNELS=1", "-x", "cu", source, "-o", ptx]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            sys.exit(f"error: no {args.nvcc} here (the CUDA toolkit's compiler; --nvcc PATH)")
        if run.returncode != 0:
            sys.exit(f"error: nvcc failed ({' '.join(cmd)}):\n{run.stderr[-3000:]}")
        with open(ptx) as f:
            ptx_text = f.read()

    entries = list(re.finditer(r"\.entry (\S+)\((.*?)\n\}\n", ptx_text, re.S))
    names = demangle([m.group(1) for m in entries])
    print(f"{'kernel':44s} {'loop':>6s} " + " ".join(f"{c:>10s}" for c in COLUMNS))
    for name, m in zip(names, entries):
        if not re.search(args.filter, name):
            continue
        lines = m.group(2).splitlines()
        labels = {l.strip()[:-1]: i for i, l in enumerate(lines) if re.match(r"\s*\$L__\w+:$", l)}
        mma = [i for i, l in enumerate(lines) if "wmma.mma" in l]
        if not mma:
            continue
        loop = None
        for i, line in enumerate(lines):
            branch = re.search(r"bra(?:\.uni)?\s+(\$L__\w+);", line)
            if branch and labels.get(branch.group(1), i) < i:
                lo = labels[branch.group(1)]
                if lo <= mma[0] and i >= mma[-1] and (loop is None or i - lo < loop[1] - loop[0]):
                    loop = (lo, i)
        if loop is None:
            print(f"{name:44s} (no loop holds all its tensor-core products)")
            continue
        counts = collections.Counter(opcode(l) for l in lines[loop[0]:loop[1] + 1])
        counts.pop(None, None)
        print(f"{name:44s} {sum(counts.values()):6d} " + " ".join(f"{counts.get(c, 0):10d}" for c in COLUMNS))


if __name__ == "__main__":
    main()
