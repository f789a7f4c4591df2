#!/usr/bin/env bash
# Runs the fanout and pairs scenarios against a 3-node Herald cluster on one
# Redis, all on this machine: subscribers connect to node B, publishes go to
# node A, so every message crosses nodes through Redis.
# Usage: bench/cluster.sh [--quick]     Results in bench/results/cluster-<UTC time>/
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/herald-target}"
quick=${1:-}
subs=10000; secs=20s; clients=1000
if [ "$quick" = --quick ]; then subs=1000; secs=5s; clients=200; fi

command -v redis-server >/dev/null || scripts/redis-test-env.sh >/dev/null
cargo build --release -q -p herald -p herald-bench
bin=$CARGO_TARGET_DIR/release
out=bench/results/cluster-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

redis_port=16390
redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no >"$out/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p $redis_port ping >/dev/null 2>&1 && break; sleep 0.1; done

ports=(18101 18102 18103)
for p in "${ports[@]}"; do
  HERALD_SERVER__LISTEN=127.0.0.1:$p HERALD_BROKER__KIND=redis \
  HERALD_BROKER__REDIS__URLS="[\"redis://127.0.0.1:$redis_port\"]" \
  HERALD_CONNECTION__LIFETIME_MIN=0s HERALD_CONNECTION__LIFETIME_MAX=0s \
  HERALD_SERVER__ALLOW_CLIENT_PUBLISH=true HERALD_LOG__LEVEL=warn \
    "$bin/herald" >"$out/herald-$p.log" 2>&1 &
  pids+=($!)
done
for p in "${ports[@]}"; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/health/ready" >/dev/null && break; sleep 0.1; done
done
a=http://127.0.0.1:${ports[0]}; b=http://127.0.0.1:${ports[1]}

run() { # name, args...
  local name=$1; shift
  echo "== $name" >&2
  timeout 300 "$bin/herald-bench" "$@" --json >"$out/$name.json" 2>"$out/$name.log" || true
  tail -n 16 "$out/$name.log" >&2
}
run fanout-1ch-${subs}sub-r10 fanout --url "$a" --subscribe-url "$b" --subscribers "$subs" --channels 1 --rate 10 --duration "$secs"
run fanout-1000ch-${subs}sub-r1000 fanout --url "$a" --subscribe-url "$b" --subscribers "$subs" --channels 1000 --rate 1000 --duration "$secs"
run pairs-${clients}-http pairs --url "$a" --subscribe-url "$b" --clients "$clients" --via http --duration "$secs"
echo "results in $out" >&2
