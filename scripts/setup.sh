#!/usr/bin/env bash
# Installs what relgraph's build and tests need beyond a Rust toolchain. Idempotent: each
# step checks first and does nothing when the thing is already there.
# Protobuf code generation uses a vendored protoc, so no system protoc is needed.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "setup: adding rustup component $component"
    rustup component add "$component"
  fi
done

# RocksDB's Rust bindings are generated at build time and need libclang (no clang binary).
if ! ldconfig -p 2>/dev/null | grep -q 'libclang-[0-9.]*\.so\|libclang\.so'; then
  echo "setup: installing libclang (RocksDB's bindings need it)"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -q
  $sudo_cmd apt-get install -y -q libclang1-14 libclang-common-14-dev
fi

# The Flight client test runs pyarrow (no relgraph code) in a virtual environment of its own.
venv="${RELGRAPH_VENV:-$HOME/.cache/relgraph/venv}"
if ! "$venv/bin/python" -c 'import pyarrow.flight' >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
    echo "setup: installing python3 and venv (for the pyarrow Flight client test)"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -q
    $sudo_cmd apt-get install -y -q python3 python3-venv
  fi
  echo "setup: installing pyarrow into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'pyarrow==26.0.1'
fi

# The CUDA kernels are compile-checked with NVRTC even without a GPU: NVIDIA's wheel
# ships libnvrtc (dev.sh puts its lib folder on LD_LIBRARY_PATH for those tests).
if ! ls "$venv"/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 >/dev/null 2>&1; then
  echo "setup: installing NVIDIA's NVRTC wheel into $venv (compile checks of the CUDA kernels)"
  "$venv/bin/pip" install -q 'nvidia-cuda-nvrtc-cu12==12.9.86'
fi
