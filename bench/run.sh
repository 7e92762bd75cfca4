#!/usr/bin/env bash
# Benchmark a fresh local 3-node st2kv cluster with st2kv-bench.
#
#   bench/run.sh [--compare-etcd] [st2kv-bench flags...]
#
# Builds st2kv-node and st2kv-bench in release mode, starts three nodes on 127.0.1.1,
# 127.0.1.2 and 127.0.1.3 (API :9101, auth :9100, peer :9300) with data in a temporary
# directory, waits for a leader, runs st2kv-bench against them, then stops the nodes with
# SIGTERM and removes the directory, also when something fails or on Ctrl-C.
#
# The cluster runs as shipped: authentication on, with a random cluster secret and a random
# password for the bootstrap admin `st2admin`, which the bench logs in as. NO_AUTH=1 runs the
# nodes with --insecure-no-auth instead (the cluster secret is still set).
#
# With --compare-etcd (or COMPARE_ETCD=1) it also starts a 3-member etcd cluster on 127.0.2.1,
# 127.0.2.2 and 127.0.2.3 (client :2379, peer :2380, data in the same temporary directory, etcd's
# default fsync on), installing etcd from the distribution's packages first if it is missing
# (needs root), and runs st2kv-bench --target both: every workload on st2kv and on etcd, in
# alternation, --rounds times (default 3), with floors, the generator's ceiling and ratios.
# etcd is stopped by the same cleanup as the nodes.
#
# Every other argument is passed to st2kv-bench and wins over the defaults here, e.g.
#   bench/run.sh --duration 5
#   bench/run.sh --workloads seq-put,put-follower-64,put-leader-64 --json > results.json
#   bench/run.sh --compare-etcd --duration 5 --rounds 3
#
# Environment:
#   COMPARE_ETCD=1    same as --compare-etcd
#   CARGO_TARGET_DIR  where cargo builds (binaries in ${CARGO_TARGET_DIR:-target}/release)
#   SMOKE=1           a quick check: 2 s per workload, 0.5 s warm-up
#   NO_BUILD=1        use the binaries already built
#   NO_AUTH=1         nodes run with --insecure-no-auth; the bench sends no credentials
#   NODE_ARGS="..."   extra flags for every st2kv-node, e.g. NODE_ARGS=--no-fsync
#   KEEP=1            keep the temporary directory (data and node/etcd logs)
#   THREADS_PER_NODE  worker threads of every st2kv node (--worker-threads) and GOMAXPROCS of
#                     every etcd member; default 1, since three members of each share the
#                     machine's cores; 0 leaves both at their defaults (one per core)
#   RUST_LOG          the nodes' log filter (default: the node's own, info)
set -euo pipefail
# A relative CARGO_TARGET_DIR means relative to where this script was started.
if [ -n "${CARGO_TARGET_DIR:-}" ] && [ "${CARGO_TARGET_DIR#/}" = "$CARGO_TARGET_DIR" ]; then
  export CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
fi
cd "$(dirname "$0")/.."

compare_etcd="${COMPARE_ETCD:-0}"
scale=""
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --compare-etcd) compare_etcd=1 ;;
    --scale)
      [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*00$ ]] || { echo "--scale needs a key count, a multiple of 100" >&2; exit 2; }
      scale="$2"
      shift
      ;;
    *) bench_args+=("$1") ;;
  esac
  shift
done
etcd_ips=(127.0.2.1 127.0.2.2 127.0.2.3)
if [ "$compare_etcd" = 1 ] && ! command -v etcd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "etcd is not installed; install etcd-server and etcd-client (or run as root)" >&2
    exit 1
  fi
  echo "installing etcd (etcd-server, etcd-client) ..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >&2
fi
if [ "$compare_etcd" = 1 ]; then
  echo "etcd: $(etcd --version 2>/dev/null | head -n 1)" >&2
fi

target="${CARGO_TARGET_DIR:-target}"
node_bin="$target/release/st2kv-node"
bench_bin="$target/release/st2kv-bench"
ips=(127.0.1.1 127.0.1.2 127.0.1.3)
members="1=${ips[0]},2=${ips[1]},3=${ips[2]}"

if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "building release binaries into $target ..." >&2
  cargo build --release -q -p st2kv-node -p st2kv-bench -p st2kv-cli
fi
cli_bin="$target/release/st2kv"
for b in "$node_bin" "$bench_bin"; do
  [ -x "$b" ] || { echo "missing $b (build it, or unset NO_BUILD)" >&2; exit 1; }
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/st2kv-bench.XXXXXX")"
pids=()
bench_pid=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$bench_pid" ]; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "node pid $pid did not stop within 10 s of SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" != 0 ]; then
    for i in 1 2 3; do
      [ -f "$tmp/n$i.log" ] || continue
      echo "--- last lines of node $i's log ---" >&2
      tail -n 15 "$tmp/n$i.log" >&2 || true
    done
    for i in 1 2 3; do
      [ -f "$tmp/etcd$i.log" ] || continue
      echo "--- last lines of etcd member $i's log ---" >&2
      tail -n 15 "$tmp/etcd$i.log" >&2 || true
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo "kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

secret() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
secret >"$tmp/cluster-secret"
admin_password="$(secret)"
printf '%s\n' "$admin_password" >"$tmp/admin-password"
chmod 600 "$tmp/cluster-secret" "$tmp/admin-password"

read -r -a node_args <<<"${NODE_ARGS:-}"
threads="${THREADS_PER_NODE:-1}"
if [ "$threads" != 0 ]; then
  node_args+=(--worker-threads "$threads")
  export GOMAXPROCS="$threads"
fi
node_args+=(--cluster-secret-file "$tmp/cluster-secret")
bench_env=()
if [ "${NO_AUTH:-0}" = 1 ]; then
  node_args+=(--insecure-no-auth)
else
  node_args+=(--admin-user st2admin --admin-password-file "$tmp/admin-password")
  bench_env=(ST2KV_BENCH_USER=st2admin "ST2KV_BENCH_PASSWORD=$admin_password")
fi
# start_node I [extra flags...]: start st2kv node I on 127.0.1.I in the background; its pid is
# then in $!.
start_node() {
  local i="$1" ip="127.0.1.$1"
  shift
  NO_COLOR=1 "$node_bin" --id "$i" --data-dir "$tmp/n$i" \
    --api-bind "$ip:9101" --auth-bind "$ip:9100" --peer-bind "$ip:9300" \
    "${node_args[@]}" "$@" >>"$tmp/n$i.log" 2>&1 &
}
for i in 1 2 3; do
  start_node "$i" --initial-cluster "$members"
  pids+=("$!")
done

urls="http://${ips[0]}:9101,http://${ips[1]}:9101,http://${ips[2]}:9101"
echo "waiting for a leader ($urls) ..." >&2
leader=""
for _ in $(seq 1 150); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a node exited during start-up" >&2; exit 1; }
  done
  if status="$(curl -fsS --max-time 2 "http://${ips[0]}:9101/v1/health/ready" 2>/dev/null)" &&
    [[ "$status" =~ \"leader\":([0-9]+) ]]; then
    leader="${BASH_REMATCH[1]}"
    break
  fi
  sleep 0.1
done
[ -n "$leader" ] || { echo "no leader was elected within 15 s" >&2; exit 1; }
echo "leader is node $leader" >&2

target_args=()
if [ "$compare_etcd" = 1 ]; then
  etcd_cluster="e1=http://${etcd_ips[0]}:2380,e2=http://${etcd_ips[1]}:2380,e3=http://${etcd_ips[2]}:2380"
  # start_etcd I CLUSTER STATE: start etcd member eI on 127.0.2.I in the background ($!).
  # Defaults otherwise, fsync of the WAL included (etcd has no switch to turn it off in 3.4
  # besides --unsafe-no-fsync, which is not used).
  start_etcd() {
    local ip="127.0.2.$1"
    etcd --name "e$1" --data-dir "$tmp/etcd$1" \
      --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
      --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
      --initial-cluster "$2" --initial-cluster-token st2kv-bench \
      --initial-cluster-state "$3" --logger zap --log-outputs stderr \
      >>"$tmp/etcd$1.log" 2>&1 &
  }
  for i in 1 2 3; do
    start_etcd "$i" "$etcd_cluster" new
    pids+=("$!")
  done
  etcd_urls="http://${etcd_ips[0]}:2379,http://${etcd_ips[1]}:2379,http://${etcd_ips[2]}:2379"
  echo "waiting for an etcd leader ($etcd_urls) ..." >&2
  etcd_leader=""
  for _ in $(seq 1 150); do
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "a node or etcd member exited during start-up" >&2; exit 1; }
    done
    if status="$(curl -fsS --max-time 2 -X POST -d '{}' "http://${etcd_ips[0]}:2379/v3/maintenance/status" 2>/dev/null)" &&
      [[ "$status" =~ \"leader\":\"([1-9][0-9]*)\" ]]; then
      etcd_leader="${BASH_REMATCH[1]}"
      break
    fi
    sleep 0.1
  done
  [ -n "$etcd_leader" ] || { echo "etcd elected no leader within 15 s" >&2; exit 1; }
  echo "etcd leader is member $etcd_leader" >&2
  target_args=(--target both --etcd-nodes "$etcd_urls" --floor-dir "$tmp")
fi

if [ -n "$scale" ]; then
  # shellcheck source=bench/scale.sh
  . bench/scale.sh
  run_scale
  exit 0
fi

smoke=()
if [ "${SMOKE:-0}" = 1 ]; then
  smoke=(--duration 2 --warmup 0.5)
fi
# Later flags win, so the caller's arguments override the SMOKE defaults. The bench runs in the
# background so that a signal to this script runs the cleanup at once.
env "${bench_env[@]}" "$bench_bin" --nodes "$urls" "${target_args[@]}" "${smoke[@]}" "${bench_args[@]}" &
bench_pid=$!
bench_rc=0
wait "$bench_pid" || bench_rc=$?
bench_pid=""

# Surface what the servers complained about during the run (colour codes stripped), leaving out
# two expected notices: openraft's "vote changed" during the first election, and the
# --insecure-no-auth warning.
for i in 1 2 3; do
  sed 's/\x1b\[[0-9;]*m//g' "$tmp/n$i.log" | grep -E '^[^ ]+ +(WARN|ERROR) ' |
    grep -vE 'because vote changed|authentication is DISABLED' >"$tmp/n$i.warn" || true
  n="$(wc -l <"$tmp/n$i.warn")"
  if [ "$n" != 0 ]; then
    echo "node $i logged $n warnings/errors; the first ones:" >&2
    head -n 8 "$tmp/n$i.warn" | cut -c1-300 >&2
  fi
done
exit "$bench_rc"
