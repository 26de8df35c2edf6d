#!/usr/bin/env python3
"""Checks ptxas's resource report for the CUDA backend's kernels.

Usage: cuda_kernel_resources.py NVCC ARCH SOURCE [nvcc options...]

Compiles SOURCE (src/kernels/cuda/cuda_backend.cu) for sm_ARCH with
--resource-usage and fails when any kernel has a stack frame or spills
registers.

A stack frame without spills is an array the compiler could not keep in
registers, most often one indexed by a value it cannot fold to a constant:
every access then goes through local memory. The tensor-core attention
kernels keep their fp32 accumulators in registers only because every index
into them is a compile-time constant, and the fp32 tiled kernels only
because each thread holds few enough of a row's columns (RowSplit); this
test catches an edit that loses that (on a GPU it costs speed, not
correctness, so no other test would).
"""

import re
import subprocess
import sys
import tempfile


def readable(mangled):
    """A short name for a kernel: flash_dq_kernel<128>, tc::dkv_kernel<64>."""
    # _ZN<len>borealis<len><anonymous namespace>[2tc]<len><name>[ILi<n>E...]...
    if not mangled.startswith("_ZN"):
        return mangled
    rest, parts = mangled[3:], []
    while True:
        n = re.match(r"(\d+)", rest)
        if not n:
            break
        size = int(n.group(1))
        parts.append(rest[n.end():n.end() + size])
        rest = rest[n.end() + size:]
    parts = [p for p in parts if p != "borealis" and not p.startswith("_GLOBAL__N")]
    if not parts:
        return mangled
    first = re.match(r"ILi(-?\d+)E", rest)
    return "::".join(parts) + (f"<{first.group(1)}>" if first else "")


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    nvcc, arch, source, options = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-std=c++17", "-O3", "-DNDEBUG", f"-arch=sm_{arch}", "-cubin",
               "--resource-usage", "-x", "cu", source, "-o", f"{tmp}/kernels.cubin", *options]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    report = run.stdout + run.stderr
    if run.returncode != 0:
        print(report)
        print("nvcc failed:", " ".join(cmd))
        return 1
    kernels, bad = 0, []
    name = None
    for line in report.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m and name:
            kernels += 1
            short = readable(name)
            stack, spills = int(m.group(1)), int(m.group(2)) + int(m.group(3))
            if stack or spills:
                bad.append(f"{short}: {line.strip()}  ({name})")
            name = None
    print(f"{kernels} functions in ptxas's report for sm_{arch}")
    if kernels < 20:
        print("too few functions in the report: did nvcc's output change?")
        print(report)
        return 1
    for b in bad:
        print("uses local memory:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
