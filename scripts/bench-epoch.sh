#!/usr/bin/env bash
# Epoch time of data-parallel training with 1, 2 and 3 workers (one thread each) on this
# machine: a coordinator and three worker processes on loopback, the demo's retail world,
# churn for one epoch; each worker keeps its partitions of a job in a store of its own.
# Needs a release build (cargo build --release).
# Usage: scripts/bench-epoch.sh [DIR]   (default DIR: a temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/relgraph
dir=${1:-$(mktemp -d)}
mkdir -p "$dir"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
"$bin" generate retail --out "$dir/retail" > /dev/null
"$bin" coordinator --id 1 --listen 127.0.0.1:0 --data-dir "$dir/coordinator" \
  --metrics-listen 127.0.0.1:0 > "$dir/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  addr=$(sed -n 's/^coordinator 1 listening on \([^ ]*\).*/\1/p' "$dir/coordinator.log")
  [ -n "$addr" ] && break
  sleep 0.1
done
for i in 1 2 3; do
  "$bin" worker --coordinator "$addr" --threads 1 --metrics-listen 127.0.0.1:0 \
    --store "$dir/store-$i" > "$dir/worker-$i.log" 2>&1 &
  pids+=($!)
done
sleep 3
query="PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -90, 0, days) > 0"
for n in 1 2 3; do
  "$bin" train "$query" --data "$dir/retail" --out "$dir/model-$n" --epochs 1 \
    --coordinator "$addr" --workers "$n" > "$dir/train-$n.log" 2>&1
  python3 - "$dir/model-$n/model.json" "$n" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))["report"]
t = report["training"]
print(f"{sys.argv[2]} worker(s): epoch {t['history'][0]['seconds']:.1f} s, "
      f"{t['seeds_per_second']:.0f} seeds/s, {t['steps']} steps, test AUROC "
      f"{report['assessment']['metrics']['test']['auroc']:.4f}")
PY
  # Encoded rows each worker holds (the last job it ran: with n workers, n of them).
  for i in 1 2 3; do
    m=$(sed -n 's/^worker listening on .* metrics \(.*\)/\1/p' "$dir/worker-$i.log")
    held=$(curl -s "http://$m/metrics" | sed -n 's/^relgraph_feature_bytes_held \(.*\)/\1/p')
    echo "  worker $i holds ${held:-0} bytes of encoded rows"
  done
done
