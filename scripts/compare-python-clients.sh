#!/usr/bin/env bash
# Runs K stock Python Flower clients x P float32 parameters x R rounds over TLS
# against (a) flower-server and (b) the stock Python Flower server, and prints
# /usr/bin/time -v figures of each server (wall time, peak RSS, CPU seconds).
# Usage: scripts/compare-python-clients.sh [K=10] [P=1000000] [R=3]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
K="${1:-10}"; P="${2:-1000000}"; R="${3:-3}"
bash "$root/scripts/setup-venv.sh"
py="$root/.venv/bin/python"
cargo build --release -p flower-server-cli --manifest-path "$root/Cargo.toml" >&2
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
bash "$root/certificates/generate.sh" "$work/certs" >/dev/null
export FLOWER_TEST_PARAMS="$P" FLWR_TELEMETRY_ENABLED=0
"$py" -c "import sys; sys.path.insert(0, '$root/python'); import numpy as np; from flower_test_client import initial_parameters; np.savez('$work/init.npz', *initial_parameters())"
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
clients() {
  local port=$1 pids=()
  for i in $(seq 0 $((K-1))); do
    "$py" "$root/python/flower_test_client.py" --address "127.0.0.1:$port" --ca "$work/certs/ca.pem" --partition "$i" >"$work/client-$i.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || echo "client $p failed" >&2; done
}
report() { # name, time-file
  awk -v n="$1" -F': ' '/Elapsed \(wall clock\)/{w=$2} /Maximum resident/{r=$2} /User time/{u=$2} /System time/{s=$2}
    END{printf "%-8s wall=%s  peak_rss=%.1f MB  cpu=%.2f s (user %.2f + sys %.2f)\n", n, w, r/1024, u+s, u, s}' "$2"
}
port=$(free_port)
/usr/bin/time -v -o "$work/rust.time" "$root/target/release/flower-server" --address "127.0.0.1:$port" \
  --ssl-ca-certfile "$work/certs/ca.pem" --ssl-certfile "$work/certs/server.pem" --ssl-keyfile "$work/certs/server.key" \
  --rounds "$R" --min-fit-clients "$K" --min-evaluate-clients "$K" --min-available-clients "$K" \
  --initial-parameters "$work/init.npz" --output-dir "$work/rust-out" >"$work/rust.out" 2>"$work/rust.log" &
srv=$!
wait_port "$port"; clients "$port"; wait "$srv"
grep "round complete" "$work/rust.log" | sed 's/\x1b\[[0-9;]*m//g' | sed 's/.*round complete/rust: round complete/'
port=$(free_port)
/usr/bin/time -v -o "$work/python.time" "$py" "$root/python/flower_reference_server.py" --port "$port" --rounds "$R" \
  --min-clients "$K" --out "$work/python.json" --cert-dir "$work/certs" >"$work/python.log" 2>&1 &
srv=$!
wait_port "$port"; clients "$port"; wait "$srv"
grep "reference-server round" "$work/python.log" || true
echo "K=$K P=$P R=$R (stock Python clients, TLS)"
report rust "$work/rust.time"
report python "$work/python.time"
