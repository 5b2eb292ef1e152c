#!/usr/bin/env bash
# Epoch time and memory of data-parallel training with 1, 2 and 3 workers (one thread
# each) on this machine: for each count a fresh coordinator and that many worker
# processes on loopback, the demo's retail world, churn for one epoch; each worker keeps
# its partitions of the job in a store of its own.
# Needs a release build (cargo build --release); RELGRAPH_BIN picks another binary.
# Usage: scripts/bench-epoch.sh [DIR]   (default DIR: a temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RELGRAPH_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/relgraph}
dir=${1:-$(mktemp -d)}
mkdir -p "$dir"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
. scripts/cluster.sh
"$bin" generate retail --out "$dir/retail" > /dev/null
kib() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
for n in 1 2 3; do
  run="$dir/run-$n"
  mkdir -p "$run"
  start_coordinator "$run"
  workers=()
  for i in $(seq "$n"); do
    "$bin" worker --coordinator "$addr" --threads 1 --metrics-listen 127.0.0.1:0 \
      --store "$run/store-$i" > "$run/worker-$i.log" 2>&1 &
    pids+=($!)
    workers+=($!)
  done
  sleep 3
  # Each worker's resident memory, sampled twice a second while the job runs.
  ( while true; do
      for i in $(seq "$n"); do kib "${workers[$((i - 1))]}" VmRSS >> "$run/rss-$i"; done
      sleep 0.5
    done ) &
  sampler=$!
  "$bin" train "$query" --data "$dir/retail" --out "$run/model" --epochs 1 \
    --coordinator "$addr" --workers "$n" > "$run/train.log" 2>&1
  kill "$sampler"
  python3 - "$run/model/model.json" "$n" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))["report"]
t = report["training"]
print(f"{sys.argv[2]} worker(s): epoch {t['history'][0]['seconds']:.1f} s, "
      f"{t['seeds_per_second']:.0f} seeds/s, {t['steps']} steps, test AUROC "
      f"{report['assessment']['metrics']['test']['auroc']:.4f}")
PY
  for i in $(seq "$n"); do
    m=$(sed -n 's/^worker listening on .* metrics \(.*\)/\1/p' "$run/worker-$i.log")
    held=$(curl -s "http://$m/metrics" | sed -n 's/^relgraph_feature_bytes_held \(.*\)/\1/p')
    peak=$(kib "${workers[$((i - 1))]}" VmHWM)
    median=$(sort -n "$run/rss-$i" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "  worker $i holds ${held:-0} bytes of encoded rows; resident memory:" \
      "peak $((peak / 1024)) MB, median $((median / 1024)) MB over the job"
  done
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
done
