#!/usr/bin/env bash
# The README's two commands:
#   ./dev.sh demo    build relgraph and run its demo
#   ./dev.sh test    formatting, lints and every test (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"
# One build cache outside the clone, shared by the demo, the tests and CI runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/relgraph/target}"
bash scripts/setup.sh
case "${1:-}" in
  demo)
    shift
    # Release: the demo trains six models, twice as fast as in the dev build.
    exec cargo run --release --quiet -- demo "$@"
    ;;
  test)
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --quiet -- -D warnings
    # The CUDA backend and `--device cuda` build (and the kernels' tests run) without
    # CUDA: cudarc loads it at run time.
    cargo clippy --features cuda --all-targets --quiet -- -D warnings
    cargo clippy -p relgraph-kernels --features cuda --all-targets --quiet -- -D warnings
    cargo test --workspace
    # With NVIDIA's NVRTC (installed by setup.sh) every CUDA kernel is compiled for
    # sm_80 and sm_90; without it those tests print "skipped: no libnvrtc".
    venv="${RELGRAPH_VENV:-$HOME/.cache/relgraph/venv}"
    nvrtc="$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib 2>/dev/null | head -n 1)"
    LD_LIBRARY_PATH="${nvrtc}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      cargo test -p relgraph-kernels --features cuda -- --nocapture
    # Any Flight client works without our code: pyarrow against the built binary.
    exec "${RELGRAPH_VENV:-$HOME/.cache/relgraph/venv}/bin/python" tests/flight_client.py \
      "$CARGO_TARGET_DIR/debug/relgraph"
    ;;
  *)
    echo "usage: ./dev.sh demo [--dir DIR] | ./dev.sh test" >&2
    exit 2
    ;;
esac
