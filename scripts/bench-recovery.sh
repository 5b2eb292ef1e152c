#!/usr/bin/env bash
# How long a data-parallel job takes to come back from a worker killed with SIGKILL: a
# fresh coordinator and 3 one-thread worker processes (each with its own store) on
# loopback train churn on a generated retail world, checkpointing every 10 steps; once
# the first checkpoint is recorded in Raft, the third worker process is killed. Prints,
# from the kill: when the coordinator gave the job to a new attempt (the lost worker's
# lease ran out, or a third of it once a survivor's ring could not reach it), when the
# survivors read the checkpoint (having read their part back from their stores, or
# loaded the data where a store lacks a partition), when the job took its first step
# after the checkpoint, when it passed the step it was at when the worker died, and the
# steps redone; then each worker's lines on how its attempts prepared their part.
# Needs a release build (cargo build --release); RELGRAPH_BIN picks another binary.
# Usage: scripts/bench-recovery.sh [CUSTOMERS] [DIR]   (default 100000 and a temporary
# directory)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RELGRAPH_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/relgraph}
customers=${1:-100000}
dir=${2:-$(mktemp -d)}
mkdir -p "$dir"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
. scripts/cluster.sh
now() { date +%s.%N; }
# Each line prefixed with the time it was written.
stamped() { while IFS= read -r line; do printf '%s %s\n' "$(now)" "$line"; done; }
# Seconds from $1 to $2, one decimal.
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
[ -d "$dir/retail" ] || "$bin" generate retail --out "$dir/retail" --customers "$customers" > /dev/null
printf 'epochs = 1\nmax_steps_per_epoch = 60\ncheckpoint_every = 10\npatience = 100\n' \
  > "$dir/job.toml"
start_coordinator "$dir"
workers=()
for i in 1 2 3; do
  "$bin" worker --coordinator "$addr" --threads 1 --metrics-listen 127.0.0.1:0 \
    --store "$dir/store-$i" > >(stamped > "$dir/worker-$i.log") 2>&1 &
  pids+=($!)
  workers+=($!)
done
sleep 2
"$bin" train "$query" --data "$dir/retail" --out "$dir/model" --config "$dir/job.toml" \
  --coordinator "$addr" --workers 3 --json > "$dir/train.json" 2> "$dir/train.log" &
train=$!
# The job as "attempt step checkpoint_step state".
job() {
  "$bin" admin jobs --coordinator "$addr" --json 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin)[0]
print(j["attempt"], j["step"], j["checkpoint_step"], j["state"])'
}
state=
until [ -n "$state" ] && [ "$(echo "$state" | cut -d' ' -f3)" -gt 0 ]; do
  sleep 0.2
  kill -0 "$train" 2> /dev/null || { echo "the job ended before a checkpoint: see $dir/train.log" >&2; exit 1; }
  state=$(job 2> /dev/null || true)
done
killed_at=$(now)
kill -9 "${workers[2]}"
victim=$(sed -n 's/.*worker registered as \([0-9]*\).*/\1/p' "$dir/worker-3.log")
step_at_kill=$(echo "$state" | cut -d' ' -f2)
checkpoint=$(echo "$state" | cut -d' ' -f3)
# A new attempt shows the step the job was at until it reports from its checkpoint.
assigned= back= stepped= passed=
while [ -z "$passed" ]; do
  state=$(job 2> /dev/null || true)
  t=$(now)
  read -r attempt step _ stage <<< "${state:-0 0 0 -}"
  if [ "$attempt" = 2 ]; then
    [ -z "$assigned" ] && assigned=$t
    [ "$stage" = train ] && [ "$step" = "$checkpoint" ] && back=$t
    [ -n "$back" ] && [ -z "$stepped" ] && [ "$step" -gt "$checkpoint" ] && stepped=$t
    [ -n "$back" ] && [ "$step" -gt "$step_at_kill" ] && passed=$t
  fi
  kill -0 "$train" 2> /dev/null || break
  sleep 0.1
done
wait "$train"
resumed=$(sed -n 's/^\([0-9.]*\) job .* resuming from.*/\1/p' "$dir"/worker-[12].log | sort -n | tail -1)
echo "killed worker $victim at step $step_at_kill (checkpoint at step $checkpoint):" \
  "new attempt after $(since "$killed_at" "$assigned") s," \
  "checkpoint read after $(since "$killed_at" "$resumed") s," \
  "first step after it $(since "$killed_at" "${stepped:-$(now)}") s," \
  "step $step_at_kill passed again after $(since "$killed_at" "${passed:-$(now)}") s;" \
  "$((step_at_kill - checkpoint)) step(s) redone"
grep -h "job 1 attempt" "$dir"/worker-[123].log | cut -d' ' -f2-
grep -h "cannot reach\|declaring" "$dir/coordinator.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c28-
python3 - "$dir/train.json" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
print(f"job {out['job']['state']} after attempt {out['job']['attempt']}, test AUROC "
      f"{out['report']['metrics']['test']['auroc']:.4f}")
PY
