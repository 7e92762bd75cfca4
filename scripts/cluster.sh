#!/usr/bin/env bash
# Start, stop or inspect a local 3-node st2kv cluster: nodes 1-3 on 127.0.0.1, 127.0.0.2 and
# 127.0.0.3 with StackStorm's default ports (API 9101, auth 9100) and peer port 9300, data and
# logs under .cluster/ in the repo.
#   scripts/cluster.sh start    build (release) and start the three nodes
#   scripts/cluster.sh stop     stop them (SIGTERM, graceful)
#   scripts/cluster.sh status   show each node's view of the cluster
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/.cluster"
members="1=127.0.0.1,2=127.0.0.2,3=127.0.0.3"

start() {
  cargo build --release -q -p st2kv-node -p st2kv-cli
  mkdir -p "$dir"
  for i in 1 2 3; do
    if [ -f "$dir/n$i.pid" ] && kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null; then
      echo "node $i already running (pid $(cat "$dir/n$i.pid"))"; continue
    fi
    ip="127.0.0.$i"
    nohup target/release/st2kv-node --id "$i" --data-dir "$dir/n$i" \
      --api-bind "$ip:9101" --auth-bind "$ip:9100" --peer-bind "$ip:9300" \
      --initial-cluster "$members" >>"$dir/n$i.log" 2>&1 &
    echo $! >"$dir/n$i.pid"
  done
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:9101/v1/cluster/status" 2>/dev/null | grep -q '"leader":[0-9]'; then
      echo "st2kv cluster is up: nodes at http://127.0.0.1, http://127.0.0.2, http://127.0.0.3 (logs in $dir)"
      echo "  target/release/st2kv --url http://127.0.0.1,http://127.0.0.2,http://127.0.0.3 key list"
      echo "  ST2_BASE_URL=http://127.0.0.2 st2 key list     # the real StackStorm CLI, any node"
      return 0
    fi
    sleep 0.1
  done
  echo "the cluster did not elect a leader within 10 s; see $dir/n*.log" >&2
  return 1
}

stop() {
  for i in 1 2 3; do
    f="$dir/n$i.pid"
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$f"
  done
  echo "stopped (data kept in $dir; remove it for a fresh cluster)"
}

status() {
  for i in 1 2 3; do
    printf 'node %s: ' "$i"
    curl -fsS "http://127.0.0.$i:9101/v1/cluster/status" 2>/dev/null || printf 'down'
    echo
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
