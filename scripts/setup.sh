#!/usr/bin/env bash
# Installs the Debian packages Borealis needs to build, test and run.
# Idempotent: prints nothing and changes nothing when every package is present.
# Usage: scripts/setup.sh [--quiet] [--with-torch]
#   --with-torch  also Debian's python3-torch and python3-numpy, for the PyTorch
#                 parity test and bench/train_vs_torch (run with /usr/bin/python3)
set -euo pipefail

with_torch=0
for arg in "$@"; do
  case "$arg" in
    --with-torch) with_torch=1 ;;
  esac
done

packages=(
  # toolchain
  g++ cmake ninja-build pkg-config git clang-format
  # libraries (see docs/dependencies in DESIGN.md)
  libopenblas-openmp-dev libopenmpi-dev openmpi-bin
  libcli11-dev libspdlog-dev libfmt-dev libtomlplusplus-dev
  nlohmann-json3-dev libsimdjson-dev libpcre2-dev zlib1g-dev libzstd-dev
  libxxhash-dev libcpp-httplib-dev
  # run charts (borealis plot)
  gnuplot-nox
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
)

# Demo data and reference fixtures come from npm; the machine's own Node.js
# is used when present, Debian's otherwise.
if ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

if [ "$with_torch" -eq 1 ]; then
  packages+=(python3-torch python3-numpy)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${#missing[@]} Debian package(s): ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "error: missing packages (${missing[*]}) and not root; run as root or install sudo (scripts/setup.sh)" >&2
    exit 1
  fi
fi

log=$(mktemp -t borealis-setup.XXXXXX)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get update -q >"$log" 2>&1; then
  cat "$log" >&2
  echo "error: apt-get update failed; check the network and /etc/apt/sources.list (scripts/setup.sh)" >&2
  exit 1
fi
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "error: apt-get install failed for: ${missing[*]} (scripts/setup.sh)" >&2
  exit 1
fi
echo "setup: done" >&2
