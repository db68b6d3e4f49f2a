#!/usr/bin/env bash
# CI: installs the pinned CUDA compilers (PyPI wheels, each set with `pip install --target` into a cache
# dir, never into the active environment), checks that kernels/ptx/*.ptx is what kernels/*.cu compiles
# to, and assembles that PTX with ptxas for sm_70..sm_90.
set -euo pipefail
cd "$(dirname "$0")/.."

root="${MOEROUTE_TOOLCHAIN:-/tmp/moeroute-toolchain}"
nvrtc=(nvidia-cuda-nvrtc-cu12==12.0.76 nvidia-cuda-runtime-cu12==12.0.107)
nvcc=(nvidia-cuda-nvcc-cu12==12.0.76)

# install DIR PKG...: pip install --target DIR, skipped when DIR already holds exactly these pins.
install() {
    local dir="$1"; shift
    if [ "$(cat "$dir/.pins" 2>/dev/null)" = "$*" ]; then return; fi
    rm -rf "$dir"
    python -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" "$@"
    echo "$*" > "$dir/.pins"
}

install "$root/nvrtc" "${nvrtc[@]}"
install "$root/nvcc" "${nvcc[@]}"
python kernels/build_ptx.py --toolchain "$root/nvrtc" --check
python kernels/build_ptx.py --ptxas "$root/nvcc"
