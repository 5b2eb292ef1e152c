# Sourced by the bench scripts: what they share to run a cluster on loopback.
# Needs $bin (the relgraph binary) and the array pids (processes to kill on exit).

if [ ! -x "$bin" ]; then
  echo "no relgraph binary at $bin: run cargo build --release (or set RELGRAPH_BIN)" >&2
  exit 1
fi

# The demo's churn question.
query="PREDICT COUNT(ORDERS.*, 0, 30, days) = 0 FOR EACH CUSTOMERS.CUSTOMER_ID WHERE COUNT(ORDERS.*, -90, 0, days) > 0"

# Starts a coordinator keeping its state and log in $1 and sets addr to its address.
start_coordinator() {
  "$bin" coordinator --id 1 --listen 127.0.0.1:0 --data-dir "$1/coordinator" \
    > "$1/coordinator.log" 2>&1 &
  pids+=($!)
  addr=
  for _ in $(seq 50); do
    addr=$(sed -n 's/^coordinator 1 listening on \([^ ]*\).*/\1/p' "$1/coordinator.log")
    [ -n "$addr" ] && return
    sleep 0.1
  done
  echo "the coordinator did not start; see $1/coordinator.log" >&2
  exit 1
}
