#!/usr/bin/env bash
# The GPU checks of the CUDA backend, prepared here and run on a machine with
# an NVIDIA GPU (which has the CUDA runtime and cuBLAS, but not the Debian
# libraries Borealis builds against).
#
# Usage:
#   scripts/device-check.sh pack   build the device preset (release, CUDA
#                                  kernels, no -march=native: the GPU
#                                  machine's CPU is another) and pack the test binary, the
#                                  borealis binary and the shared libraries
#                                  they need, other than the C runtime and
#                                  CUDA's own, into .device-pack/pack.tar.xz
#                                  (the C++ runtime apart, used there only
#                                  where the machine's is older)
#   scripts/device-check.sh run    on the GPU machine: unpack, print the
#                                  device (doctor, and NCCL started on one
#                                  rank), run every CUDA test (*CudaOps*,
#                                  *CudaBf16Ops*, *CudaModel*, CudaLimits.*,
#                                  *NcclOneRank*: NCCL on one rank;
#                                  their emulated and guarded instances ran
#                                  in CI already) with
#                                  BOREALIS_REQUIRE_CUDA=1, train
#                                  llama-5m on Brown for 20 steps on the
#                                  CPU and the GPU (fp32: losses within
#                                  1e-3; bf16 matmuls: within 1e-2; a
#                                  bf16 run stopped and resumed equal to
#                                  the uninterrupted one bit for bit;
#                                  fp32 stopped on the GPU at step 10 and
#                                  resumed on the CPU: within 1e-3),
#                                  then bench train on the GPU for gpt2-124m
#                                  (fp32 and bf16) and llama-110m (bf16),
#                                  T = 1024, then, where the machine has
#                                  compute-sanitizer, its memcheck over the
#                                  op tests and racecheck and synccheck over
#                                  attention's, then PyTorch's step of the
#                                  same benchmarks (bench/torch_train_step.py)
#                                  and the ratio, then, where the machine has
#                                  ncu, a profile of a bf16 step's attention
#                                  and loss kernels; every stage within one
#                                  deadline (DEVICE_CHECK_SECONDS, default
#                                  450; DEVICE_CHECK_GPU=cpu runs the
#                                  GPU's training and bench on the CPU, to
#                                  try the script without a GPU); write the
#                                  log to $OUT (or
#                                  ./device-out) and exit with the checks'
#                                  status
# The pack is about 20 MB; .device-pack/ is ignored by git and carried to the
# GPU machine as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

pack_dir=.device-pack
mode=${1:-}

case "$mode" in
  pack)
    cmake --preset device >/dev/null
    cmake --build --preset device -j "$(nproc)"
    # (The tests also hold borealis::emulated::make_cuda_backend, the emulator's.)
    if ! grep -q ' borealis::make_cuda_backend' <(nm -C build/device/tests/borealis_tests); then
      echo "error: build/device has no CUDA backend (is the CUDA toolkit installed?)" >&2
      exit 1
    fi
    rm -rf "$pack_dir"
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/lib"
    cp build/device/tests/borealis_tests build/device/src/borealis "$stage/"
    # Libraries the GPU machine lacks: everything ldd resolves except the C and
    # C++ runtime (the machine's own are newer) and CUDA's (the machine's
    # match its driver).
    # The C++ runtime goes apart, into lib-cxx: used there only where the
    # machine's is older than the one the binaries were built with.
    mkdir -p "$stage/lib-cxx"
    for bin in "$stage/borealis_tests" "$stage/borealis"; do
      ldd "$bin" | awk '$3 ~ /^\// {print $3}'
    done | sort -u | while read -r lib; do
      case "$(basename "$lib")" in
        libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | ld-linux* | \
          libcuda.so.* | libcudart.so.* | libcublas*.so.*) ;;
        libstdc++.so.* | libgcc_s.so.*) cp -L "$lib" "$stage/lib-cxx/" ;;
        *) cp -L "$lib" "$stage/lib/" ;;
      esac
    done
    # What the binaries need of the C and C++ runtimes, for the log there.
    for bin in "$stage/borealis_tests" "$stage/borealis"; do
      objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*\|GLIBCXX_[0-9.]*\|CXXABI_[0-9.]*'
    done | sort -uV | awk -F_ '{need[$1] = $0} END {for (k in need) print need[k]}' |
      sort >"$stage/needs.txt"
    # The Brown corpus as one dataset with its tokenizer, for the training
    # check (20 steps of llama-5m on the CPU and on the GPU).
    ./scripts/get-brown.sh >/dev/null
    mkdir -p "$stage/brown"
    bin=build/device/src/borealis
    "$bin" --log-level warn tokenizer train --vocab-size 8000 -i data/brown/brown.jsonl \
      -o "$stage/brown/tok.json"
    "$bin" --log-level warn data prepare -i data/brown/brown.jsonl -t "$stage/brown/tok.json" \
      -o "$stage/brown/brown" --append-eod >/dev/null
    mkdir -p "$pack_dir"
    tar -C "$stage" -cJf "$pack_dir/pack.tar.xz" .
    echo "device-check: packed $(du -h "$pack_dir/pack.tar.xz" | cut -f1) into $pack_dir/pack.tar.xz"
    echo "device-check: on the GPU machine, carry $pack_dir and run: scripts/device-check.sh run"
    ;;
  run)
    # Every stage is bounded, and all of them by one deadline
    # (DEVICE_CHECK_SECONDS, default 450, from the start), so that a stage that
    # hangs leaves time for the others and the log is whole before the
    # device call's own limit. run_bounded MAX CMD...: CMD with a time-out of
    # MAX seconds or what is left, whichever is less; with under 20 s left,
    # a line in the log instead (status 124).
    deadline=$((SECONDS + ${DEVICE_CHECK_SECONDS:-450}))
    run_bounded() {
      local max=$1 left=$((deadline - SECONDS))
      shift
      if ((left < 20)); then
        echo "device-check: out of time, skipped: $*" >&2
        return 124
      fi
      timeout "$((left < max ? left : max))" "$@"
    }
    out=${OUT:-$PWD/device-out}
    mkdir -p "$out"
    log="$out/device-check.log"
    echo "device-check: started $(date -u '+%F %T') UTC on $(hostname)" | tee "$log"
    work=$(mktemp -d)
    # (Python's tarfile where tar cannot unpack xz: the image may lack xz.)
    tar -C "$work" -xJf "$pack_dir/pack.tar.xz" 2>>"$log" ||
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$pack_dir/pack.tar.xz" "$work" 2>&1 | tee -a "$log"
    # CUDA's libraries: the toolkit's, or those of the Python wheels.
    cuda_libs=$(
      for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/nvidia/lib64; do
        [ -d "$d" ] && echo "$d"
      done
      # (Across mounts: the wheels may lie on another file system than /.
      # A folder it cannot read, or its time-out, must not end the script.)
      {
        run_bounded 60 find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o \
          \( -name 'libcublasLt.so.13' -o -name 'libcudart.so.13' -o -name 'libnccl.so.2' \) \
          -printf '%h\n' 2>/dev/null || true
      } | sort -u
    )
    LD_LIBRARY_PATH="$work/lib:$(echo "$cuda_libs" | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
    # The machine's C++ runtime, unless the binaries cannot start with it
    # ("GLIBCXX_3.4.30 not found": it is older than the build's): then the
    # packed one, ahead of it.
    cxx_runtime="the machine's"
    if ! probe=$("$work/borealis" --version 2>&1) && grep -q 'GLIBCXX_\|CXXABI_' <<<"$probe"; then
      LD_LIBRARY_PATH="$work/lib-cxx:$LD_LIBRARY_PATH"
      cxx_runtime="the packed one (the machine's is older: $(head -n 1 <<<"$probe"))"
    fi
    {
      echo "== runtimes: the binaries need $(paste -sd' ' "$work/needs.txt"); $(ldd --version |
        head -n 1); C++ runtime: $cxx_runtime"
      "$work/borealis" --version || echo "(borealis does not start here)"
      echo "== libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
      ldd "$work/borealis_tests" | grep -E 'not found|cuda|cublas' || true
      echo "== device"
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
      echo "== borealis doctor"
      run_bounded 60 "$work/borealis" doctor || true
      echo "== borealis doctor --dist --dist-device cuda (NCCL on one rank)"
      run_bounded 90 "$work/borealis" doctor --dist --dist-device cuda --dist-max-size 1M \
        --dist-timeout 60 || true
      echo "== CUDA tests"
    } 2>&1 | tee -a "$log"
    status=0
    export BOREALIS_REQUIRE_CUDA=1
    # The device of the training checks and the benchmark: cuda, or (to try
    # this script itself on a machine without a GPU) DEVICE_CHECK_GPU=cpu.
    gpu=${DEVICE_CHECK_GPU:-cuda}
    [ "$gpu" = cuda ] || echo "device-check: the GPU's runs on $gpu (DEVICE_CHECK_GPU)" | tee -a "$log"
    run_bounded 240 "$work/borealis_tests" \
      --gtest_filter='*CudaOps*:*CudaBf16Ops*:*CudaModel*:CudaLimits.*:*NcclOneRank*-*emulated*:*guarded*' 2>&1 |
      tee -a "$log" ||
      status=$?
    echo "device-check: tests exited with $status" | tee -a "$log"
    # 20 steps of llama-5m on the Brown corpus, on the CPU and on the GPU
    # (fp32, and bf16 matmuls): the GPU's losses must track the CPU's.
    echo "1 $work/brown/brown brown" > "$work/brown/list.txt"
    # train RUN DEVICE PRECISION [OPTION...]: 20 steps of llama-5m into
    # $work/RUN (a run that is there already resumes), logged.
    train() {
      local run=$1 device=$2 precision=$3
      shift 3
      run_bounded 150 "$work/borealis" train configs/brown-llama-5m.toml --quiet \
        --run-dir "$work/$run" --steps 20 "$@" \
        --set "data.data_list=$work/brown/list.txt" --set "data.tokenizer=$work/brown/tok.json" \
        --set train.device="$device" --set train.precision="$precision" \
        --set checkpoint.every=0 --set eval.every=0 --set optim.warmup_steps=5 2>&1 |
        tee -a "$log"
    }
    # stopped_and_resumed RUN DEVICE PRECISION DEVICE2 PRECISION2: stopped at
    # step 10, then resumed to 20 on DEVICE2 only from that stop (where the
    # first leg failed, the second would start afresh and prove nothing).
    stopped_and_resumed() {
      train "$1" "$2" "$3" --stop-at-step=10 || return 1
      if [ ! -d "$work/$1/checkpoints/step-00000010" ]; then
        echo "resume check: $1 has no checkpoint of step 10 to resume from" | tee -a "$log"
        return 1
      fi
      train "$1" "$4" "$5"
    }
    for run in cpu:fp32 gpu:fp32 gpu:bf16; do
      where=${run%:*} precision=${run#*:}
      device=cpu
      [ "$where" = gpu ] && device=$gpu
      echo "== train 20 steps on $device ($precision)" | tee -a "$log"
      train "run-$where-$precision" "$device" "$precision" || status=1
    done
    cat > "$work/compare.py" <<'PY'
import json, os, sys
tolerance = float(sys.argv[3])
for path in sys.argv[1:3]:
    if not os.path.exists(path):
        print(f"training check: {path} is missing (that run failed)")
        sys.exit(1)
def losses(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if r.get("kind") == "train"}
cpu, gpu = losses(sys.argv[1]), losses(sys.argv[2])
if len(cpu) != 20 or sorted(gpu) != sorted(cpu):
    print(f"training check: steps differ: {len(cpu)} on the CPU, {len(gpu)} on the GPU")
    sys.exit(1)
worst = max(abs(gpu[s] - cpu[s]) / abs(cpu[s]) for s in cpu)
print(f"training check ({os.path.basename(os.path.dirname(sys.argv[2]))}): 20 steps, worst "
      f"relative loss difference GPU vs CPU {worst:.2e} (tolerance {tolerance:g})")
sys.exit(0 if worst <= tolerance else 1)
PY
    for run in fp32:1e-3 bf16:1e-2; do
      python3 "$work/compare.py" "$work/run-cpu-fp32/metrics.jsonl" \
        "$work/run-gpu-${run%:*}/metrics.jsonl" "${run#*:}" 2>&1 | tee -a "$log" || status=1
    done
    # Resume on the GPU is exact: 10 steps, stop, resume to 20 (bf16) must
    # give the uninterrupted bf16 run's losses and weights, bit for bit.
    echo "== train 20 steps on $gpu (bf16), stopped at 10 and resumed" | tee -a "$log"
    if ! stopped_and_resumed run-resumed "$gpu" bf16 "$gpu" bf16; then
      status=1
    else
      python3 "$work/compare.py" "$work/run-gpu-bf16/metrics.jsonl" \
        "$work/run-resumed/metrics.jsonl" 0 2>&1 | tee -a "$log" || status=1
      if cmp -s "$work/run-gpu-bf16/checkpoints/step-00000020/model.safetensors" \
        "$work/run-resumed/checkpoints/step-00000020/model.safetensors"; then
        echo "resume check: the resumed run's weights equal the uninterrupted run's" | tee -a "$log"
      else
        echo "resume check: the resumed run's weights DIFFER" | tee -a "$log"
        status=1
      fi
    fi
    # Checkpoints do not depend on the device: a run stopped on the GPU at
    # step 10 (fp32) goes on to 20 on the CPU, and tracks the all-CPU run.
    echo "== train 20 steps: on $gpu (fp32) to step 10, resumed on the cpu" | tee -a "$log"
    if ! stopped_and_resumed run-across "$gpu" fp32 cpu fp32; then
      status=1
    else
      python3 "$work/compare.py" "$work/run-cpu-fp32/metrics.jsonl" \
        "$work/run-across/metrics.jsonl" 1e-3 2>&1 | tee -a "$log" || status=1
    fi
    # The training-step benchmark on the GPU (figures, not a pass/fail check).
    for run in gpt2-124m:fp32 gpt2-124m:bf16 llama-110m:bf16; do
      model=${run%:*} precision=${run#*:}
      echo "== bench train --device $gpu --model $model --precision $precision" | tee -a "$log"
      run_bounded 120 "$work/borealis" bench train --device "$gpu" --model "$model" \
        --precision "$precision" --batch 8 --seq-len 1024 --steps 3 2>&1 |
        tee "$work/bench-$model-$precision.txt" | tee -a "$log" ||
        echo "(bench exited with $?)" | tee -a "$log"
    done
    # compute-sanitizer, where the machine has it and it runs there:
    # memcheck over the op tests, racecheck and synccheck over attention's
    # (the tiled kernels' shared memory and warp synchronization). An error
    # it reports fails the check; a tool that cannot run is only logged.
    # cuda_tool NAME: the path of one of CUDA's tools, on the PATH or in a
    # toolkit's bin folder (nothing where there is none).
    cuda_tool() {
      local path candidate
      path=$(command -v "$1" || true)
      for candidate in /usr/local/cuda*/bin/"$1"; do
        [ -z "$path" ] && [ -x "$candidate" ] && path=$candidate
      done
      echo "$path"
    }
    sanitizer=$(cuda_tool compute-sanitizer)
    if [ -z "$sanitizer" ]; then
      echo "== compute-sanitizer: not on this machine" | tee -a "$log"
    fi
    for check in 'memcheck:*CudaOps*/cuda:*CudaBf16Ops*/cuda' 'racecheck:*Attention*/cuda' \
      'synccheck:*Attention*/cuda'; do
      [ -n "$sanitizer" ] || break
      tool=${check%%:*} filter=${check#*:}
      echo "== compute-sanitizer --tool $tool, tests $filter" | tee -a "$log"
      rc=0
      run_bounded 120 "$sanitizer" --tool "$tool" --error-exitcode 86 "$work/borealis_tests" \
        --gtest_filter="$filter" >"$out/sanitizer-$tool.log" 2>&1 || rc=$?
      tail -n 25 "$out/sanitizer-$tool.log" | tee -a "$log"
      case $rc in
        0) verdict="no errors" ;;
        86)
          verdict="ERRORS (sanitizer-$tool.log)"
          status=1
          ;;
        *) verdict="did not run through (exit $rc; sanitizer-$tool.log)" ;;
      esac
      echo "sanitizer $tool: $verdict" | tee -a "$log"
    done
    # The baseline of the benchmark, measured in the same run: PyTorch's
    # training step of the same models on the same device
    # (bench/torch_train_step.py: eager, scaled_dot_product_attention, bf16
    # autocast, AdamW fused), and Borealis's mean tokens/s over PyTorch's.
    # Figures, not a pass/fail check.
    for run in gpt2-124m:fp32 gpt2-124m:bf16 llama-110m:bf16; do
      model=${run%:*} precision=${run#*:}
      echo "== PyTorch: bench/torch_train_step.py --device $gpu, $model, $precision" | tee -a "$log"
      # (The preset's config, from a one-step bench on the CPU, once a model.)
      if [ ! -s "$work/config-$model.json" ] &&
        ! run_bounded 60 "$work/borealis" --log-level warn bench train --device cpu \
          --model "$model" --batch 1 --seq-len 8 --steps 1 --json >"$work/config-$model.json"; then
        rm -f "$work/config-$model.json"
        echo "(no config for $model)" | tee -a "$log"
        continue
      fi
      run_bounded 120 python3 bench/torch_train_step.py --config-json "@$work/config-$model.json" \
        --device "$gpu" --precision "$precision" --batch 8 --seq 1024 --steps 3 \
        --threads "$(nproc)" 2>&1 | tee "$work/torch-$model-$precision.json" | tee -a "$log" ||
        echo "(PyTorch exited with $?)" | tee -a "$log"
      python3 - "$work/bench-$model-$precision.txt" "$work/torch-$model-$precision.json" \
        "$model" "$precision" <<'PY' 2>&1 | tee -a "$log" || true
import json, re, sys
def text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
ours = re.search(r"mean step\s+([0-9.]+) tokens/s", text(sys.argv[1]))
theirs = None
for line in reversed(text(sys.argv[2]).splitlines()):  # its JSON: the last line that is one
    try:
        theirs = json.loads(line)["tokens_per_s_mean"]
        break
    except (ValueError, KeyError, TypeError):
        pass
if ours is None or theirs is None:
    print(f"{sys.argv[3]} {sys.argv[4]}: no ratio (a run failed)")
else:
    b = float(ours.group(1))
    print(f"{sys.argv[3]} {sys.argv[4]}: Borealis {b:.0f} tokens/s, PyTorch {theirs:.0f} tokens/s: "
          f"Borealis / PyTorch = {b / theirs:.2f}")
PY
    done
    # Nsight Compute, where the machine has it: the attention and loss
    # kernels of one bf16 gpt2-124m step (the bench's warm-up: 12 forward,
    # the loss, 12 dq and 12 dk/dv launches), speed of light, occupancy and
    # launch figures summed up per kernel in ncu.txt. Figures only.
    ncu=$(cuda_tool ncu)
    if [ -z "$ncu" ] || [ "$gpu" != cuda ]; then
      echo "== ncu: not run (not on this machine, or no GPU)" | tee -a "$log"
    else
      echo "== ncu: attention and loss kernels of a gpt2-124m bf16 step (ncu.txt)" | tee -a "$log"
      run_bounded 150 "$ncu" --clock-control none --kernel-name-base demangled \
        --kernel-name 'regex:tc::(forward|dq|dkv)_kernel|crossentropy_kernel' --launch-count 37 \
        --section SpeedOfLight --section Occupancy --section LaunchStats \
        --print-summary per-kernel "$work/borealis" bench train --device cuda --model gpt2-124m \
        --precision bf16 --batch 8 --seq-len 1024 --steps 1 >"$out/ncu.txt" 2>&1 ||
        echo "(ncu exited with $?)" | tee -a "$log"
      grep -E '_kernel|Duration|Throughput|Achieved Occupancy|Registers Per|Shared Memory Config' \
        "$out/ncu.txt" | head -n 80 | tee -a "$log" || true
    fi
    echo "device-check: log in $log"
    exit "$status"
    ;;
  *)
    echo "usage: scripts/device-check.sh pack|run" >&2
    exit 2
    ;;
esac
