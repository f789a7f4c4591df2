#!/usr/bin/env bash
# Runs every herald-bench scenario against Herald, Nchan and sockudo on this machine and prints
# one table: each figure per server and Herald's ratio to the best peer.
#
# Usage: bench/compare.sh [--quick] [--servers "herald nchan sockudo"] [--repeat N] [--only REGEX]
#                         [--out DIR] [--no-build]
#   --quick    smaller N and 10 s phases: a smoke run of a few minutes
#   --servers  which servers to run (default: all three)
#   --repeat   run each scenario N times, the servers taking turns in a rotated order each
#              round, and report each figure's median (default 1)
#   --only     run only the scenarios whose label matches REGEX (grep -E), e.g. 'idle|connect'
#   --out      where the JSON reports and logs go (default: bench/results/<timestamp>)
#   --no-build use the release binaries already in $CARGO_TARGET_DIR
# Env: HERALD_PEERS_DIR (default: ../shared/peers from the repository root),
#      CARGO_TARGET_DIR (default: $HOME/.cache/herald-target).
#
# The server under test is pinned to core 0 and the generator to core 1 (taskset). Every
# server is started fresh for each scenario and killed afterwards (and on exit).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
peers=${HERALD_PEERS_DIR:-$root/../shared/peers}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/herald-target}
quick=0
servers="herald nchan sockudo"
out=""
only=""
build=1
repeat=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --servers) servers=$2; shift ;;
    --out) out=$2; shift ;;
    --only) only=$2; shift ;;
    --no-build) build=0 ;;
    --repeat) repeat=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case "$repeat" in ''|*[!0-9]*|0) echo "--repeat takes a positive count" >&2; exit 2 ;; esac
for tool in taskset pgrep curl python3; do
  command -v "$tool" >/dev/null || { echo "compare.sh needs $tool" >&2; exit 1; }
done
out=${out:-$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

SERVER_CORE=0
GEN_CORE=1
PORT_HERALD=18080
PORT_NCHAN=18090
PORT_SOCKUDO=16001

if [ "$quick" = 1 ]; then
  SUBS=1000; CHANNELS_MANY=100; RATE_LOW=10; RATE_MANY=100
  SUBS_HIGH=200; RATE_HIGH=100; SUBS_HIGHER=50; RATE_HIGHER=400
  PAIRS_CLIENTS=200; PAIRS_RATE=1000; IDLE_N=2000; CONNECT_N=2000; PUSHCA_HTTP_CLIENTS=160
  PHASE=10s; PAIRS_PHASE=10s; PROCS_BIG=1
  SEARCH="--rate-start 8 --step-duration 2s --max-steps 14 --duration 60s"
else
  SUBS=10000; CHANNELS_MANY=1000; RATE_LOW=10; RATE_MANY=1000
  # 10,000 subscribers at 100 msg/s would need 1M deliveries/s, beyond what one core of this
  # machine can receive; the higher rates use fewer subscribers (100k deliveries/s each).
  SUBS_HIGH=1000; RATE_HIGH=100; SUBS_HIGHER=100; RATE_HIGHER=1000
  PAIRS_CLIENTS=1000; PAIRS_RATE=2890; IDLE_N=19000; CONNECT_N=19000; PUSHCA_HTTP_CLIENTS=800
  PHASE=20s; PAIRS_PHASE=60s; PROCS_BIG=2
  # Doubling from 1 msg/s (10,000 deliveries/s), then bisecting: at most 16 steps of 5 s plus
  # their drains, and never more than 4 minutes.
  SEARCH="--rate-start 1 --step-duration 5s --max-steps 16 --duration 240s"
fi
# The highest sustainable rate's latency bound. On one core, handing one message to 10,000
# WebSockets alone takes ~90 ms (~9 µs each), so the generator's 50 ms default would call
# every rate unsustainable; 250 ms allows that fan-out plus some queueing, and a server that
# falls behind still fails on its deliveries/s (>= 97% of the offered rate × subscribers).
# A step's drain ends as soon as everything arrived; up to 10 s lets a failed step's backlog
# clear before the next step starts.
SEARCH="--rate max $SEARCH --max-p99 250ms --drain 10s"

# Each server holds up to IDLE_N sockets, and so does the generator over its processes: raise
# the open-file limit to the hard one (every server and generator started below inherits it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_N + 500)) ]; then
  echo "the open-file limit ($(ulimit -n)) is below the $((IDLE_N + 500)) the scenarios need" >&2
  exit 1
fi

if [ "$build" = 1 ]; then
  echo "==> building herald and herald-bench (release)" >&2
  (cd "$root" && cargo build --release -q -p herald -p herald-bench)
fi
HERALD="$CARGO_TARGET_DIR/release/herald"
BENCH="$CARGO_TARGET_DIR/release/herald-bench"

server_pid=""
server_kind=""

stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap 'stop_server' EXIT INT TERM

# Pins a process tree (every thread of every process) to the server core.
pin_tree() {
  local p
  for p in "$1" $(pgrep -P "$1" || true); do
    taskset -a -p -c "$SERVER_CORE" "$p" >/dev/null
  done
}

# start_server KIND -> sets server_pid, server_kind, url; fails if the server is not up.
start_server() {
  server_kind=$1
  server_pid=""
  case "$1" in
    herald)
      HERALD_SERVER__LISTEN=127.0.0.1:$PORT_HERALD \
      HERALD_SERVER__ALLOW_CLIENT_PUBLISH=true \
      HERALD_CONNECTION__LIFETIME_MIN=0s HERALD_CONNECTION__LIFETIME_MAX=0s \
      HERALD_LOG__LEVEL=warn \
        taskset -c "$SERVER_CORE" "$HERALD" serve >>"$out/herald.server.log" 2>&1 &
      server_pid=$!
      url=http://127.0.0.1:$PORT_HERALD
      for _ in $(seq 100); do curl -fs -o /dev/null "$url/health/ready" && break; sleep 0.1; done
      curl -fs -o /dev/null "$url/health/ready" || return 1
      ;;
    # Started on the server's core, so that a server sizing its threads by the CPUs it may
    # use sees one (sockudo's tokio would otherwise start two workers, then share one core).
    nchan)
      server_pid=$(taskset -c "$SERVER_CORE" "$peers/start-nchan.sh" "$PORT_NCHAN" 1 | tail -1) || return 1
      url=http://127.0.0.1:$PORT_NCHAN
      ;;
    sockudo)
      # The peer script builds into $HOME/.cache/peers/sockudo and logs beside it, but does
      # not create the parent directory on a fresh machine.
      mkdir -p "$HOME/.cache/peers"
      server_pid=$(taskset -c "$SERVER_CORE" "$peers/start-sockudo.sh" "$PORT_SOCKUDO" | tail -1) || return 1
      url=http://127.0.0.1:$PORT_SOCKUDO
      ;;
  esac
  [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null || return 1
  pin_tree "$server_pid"
}

# target SERVER TRANSPORT -> herald-bench --target value, or empty if unsupported
target_for() {
  case "$1/$2" in
    herald/ws) echo herald ;; herald/sse) echo herald-sse ;;
    nchan/ws) echo nchan ;; nchan/sse) echo nchan-sse ;;
    sockudo/ws) echo sockudo ;; herald/pushca) echo pushca ;; *) echo "" ;;
  esac
}

# run NAME SERVER TRANSPORT ARGS... : one scenario against a fresh server; $round names the
# report when the run repeats.
run() {
  local name=$1 server=$2 transport=$3; shift 3
  local target; target=$(target_for "$server" "$transport")
  [ -n "$target" ] || return 0
  if [ -n "$only" ] && ! grep -Eq "$only" <<<"$name"; then return 0; fi
  local file=$name.$server
  [ "$repeat" = 1 ] || file=$file.r$round
  echo "==> $name on $server, round $round of $repeat ($(cut -d' ' -f1-3 /proc/loadavg) load)" | tee -a "$out/progress.log" >&2
  if ! start_server "$server"; then
    echo "    $server did not start; skipped" >&2
    stop_server
    return 0
  fi
  local json="$out/$file.json"
  if ! timeout 900 taskset -c "$GEN_CORE" "$BENCH" "$@" --target "$target" --url "$url" \
       --server-pid "$server_pid" --json >"$json" 2>"$out/$file.log"; then
    echo "    failed (see $out/$file.log)" >&2
    # A stub, so that the table shows the round as missing rather than a median of the rest.
    printf '{"failed": true, "log": "%s.log"}\n' "$file" >"$json"
  fi
  stop_server
  sleep 1
}

# each_on SERVERS NAME TRANSPORT ARGS... : the scenario on each of SERVERS that this run
# includes, --repeat times. Round k starts at the k-th server, so no server always runs first
# (the VM's speed drifts from minute to minute).
each_on() {
  local only_on=$1; shift
  local list=() s i
  for s in $servers; do
    case " $only_on " in *" $s "*) list+=("$s") ;; esac
  done
  [ ${#list[@]} -gt 0 ] || return 0
  for round in $(seq "$repeat"); do
    for i in $(seq 0 $((${#list[@]} - 1))); do
      run "$1" "${list[$(((i + round - 1) % ${#list[@]}))]}" "${@:2}"
    done
  done
}
each() { each_on "$servers" "$@"; }

# sockudo's first start builds it (about 13 minutes on two cores): build it here, on both
# cores, rather than in a first run pinned to one.
if [[ " $servers " == *" sockudo "* ]] && [ ! -x "${SOCKUDO_ROOT:-$HOME/.cache/peers/sockudo}/bin/sockudo" ]; then
  echo "==> building sockudo (first use)" >&2
  mkdir -p "$HOME/.cache/peers"
  built=$("$peers/start-sockudo.sh" "$PORT_SOCKUDO" | tail -1) || { echo "sockudo did not build" >&2; exit 1; }
  kill -TERM "$built" 2>/dev/null || true
  sleep 1
fi

round=1
echo "loadavg at start: $(cat /proc/loadavg)" >>"$out/machine.txt"
grep -m1 'model name' /proc/cpuinfo >>"$out/machine.txt" || true
echo "commit $(git -C "$root" rev-parse --short HEAD) (work tree may hold others' uncommitted changes)" >>"$out/machine.txt"
nproc >>"$out/machine.txt"
echo "rounds per scenario: $repeat" >>"$out/machine.txt"
free -g | sed -n 2p >>"$out/machine.txt"

each fanout-1ch-${SUBS}sub-r$RATE_LOW ws fanout --subscribers $SUBS --channels 1 --rate $RATE_LOW --duration $PHASE
# The highest rate each server sustains for the same 10,000 subscribers (see SEARCH above).
# shellcheck disable=SC2086 # SEARCH is a list of options
each fanout-1ch-${SUBS}sub-sustainable ws fanout --subscribers $SUBS --channels 1 $SEARCH
each fanout-1ch-${SUBS_HIGH}sub-r$RATE_HIGH ws fanout --subscribers $SUBS_HIGH --channels 1 --rate $RATE_HIGH --duration $PHASE --drain 20s
each fanout-1ch-${SUBS_HIGHER}sub-r$RATE_HIGHER ws fanout --subscribers $SUBS_HIGHER --channels 1 --rate $RATE_HIGHER --duration $PHASE --drain 20s
each fanout-${CHANNELS_MANY}ch-${SUBS}sub-r$RATE_MANY ws fanout --subscribers $SUBS --channels $CHANNELS_MANY --rate $RATE_MANY --duration $PHASE
each fanout-sse-1ch-${SUBS}sub-r$RATE_LOW sse fanout --subscribers $SUBS --channels 1 --rate $RATE_LOW --duration $PHASE
# shellcheck disable=SC2086 # SEARCH is a list of options
each fanout-sse-1ch-${SUBS}sub-sustainable sse fanout --subscribers $SUBS --channels 1 $SEARCH
each pairs-http ws pairs --clients $PAIRS_CLIENTS --via http --concurrency 100 --duration $PAIRS_PHASE
# Over Herald's WebSocket publish, with as many messages in flight as the HTTP publishers keep
# requests in flight (--publish-concurrency, 32), so latencies compare at equal queueing.
each_on herald pairs-ws ws pairs --clients $PAIRS_CLIENTS --via ws --concurrency 32 --duration $PAIRS_PHASE
# The same with `"reply": false`: Herald answers a publish only if it fails, as a client
# streaming messages would ask (the peers' HTTP publish always answers).
each_on herald pairs-ws-noreply ws pairs --clients $PAIRS_CLIENTS --via ws --no-reply --concurrency 32 --duration $PAIRS_PHASE
# The same at the rate of the Pushca seed's published single-node WebSocket run (2,890 msg/s),
# so latencies are compared at equal load rather than at each server's own maximum.
each pairs-http-r$PAIRS_RATE ws pairs --clients $PAIRS_CLIENTS --via http --rate $PAIRS_RATE --concurrency 1000 --duration $PAIRS_PHASE
each_on herald pairs-ws-r$PAIRS_RATE ws pairs --clients $PAIRS_CLIENTS --via ws --rate $PAIRS_RATE --concurrency 1000 --duration $PAIRS_PHASE
# Pairs in the Pushca seed's own protocol (Herald's Pushca dialect; the peers do not speak it):
# SEND_MESSAGE over the sender's WebSocket, unpaced and at the seed's rate, and with
# acknowledge (the receiver acknowledges each message; the sender waits for it).
each_on herald pairs-pushca pushca pairs --clients $PAIRS_CLIENTS --via ws --concurrency 100 --duration $PAIRS_PHASE
each_on herald pairs-pushca-r$PAIRS_RATE pushca pairs --clients $PAIRS_CLIENTS --via ws --rate $PAIRS_RATE --concurrency 1000 --duration $PAIRS_PHASE
each_on herald pairs-pushca-ack pushca pairs --clients $PAIRS_CLIENTS --via ws --ack --concurrency 100 --duration $PAIRS_PHASE
# The seed's HTTP figures were for 800 clients sending over its REST API.
each_on herald pairs-pushca-http pushca pairs --clients $PUSHCA_HTTP_CLIENTS --via http --concurrency 100 --duration $PAIRS_PHASE
each idle ws idle --connections $IDLE_N --procs $PROCS_BIG --duration $PHASE
each idle-sse sse idle --connections $IDLE_N --procs $PROCS_BIG --duration $PHASE
# Pushca clients: identified connections, opened through the router (the seeds' dialects' path).
each_on herald idle-pushca pushca idle --connections $IDLE_N --procs $PROCS_BIG --duration $PHASE
each connect ws connect --connections $CONNECT_N --procs $PROCS_BIG --connect-concurrency 200

echo "loadavg at end: $(cat /proc/loadavg)" >>"$out/machine.txt"
python3 "$root/bench/table.py" "$out" | tee "$out/table.md"
