#!/usr/bin/env bash
# Start, stop or inspect a local 3-node st2kv cluster: nodes 1-3 on 127.0.0.1, 127.0.0.2 and
# 127.0.0.3 with StackStorm's default ports (API 9101, auth 9100) and peer port 9300, data and
# logs under .cluster/ in the repo. On first start it provisions the admin password
# (.cluster/admin-password, user st2admin) and the cluster secret (.cluster/cluster-secret).
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
  chmod 700 "$dir"
  umask 077
  [ -s "$dir/admin-password" ] || head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/admin-password"
  [ -s "$dir/cluster-secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/cluster-secret"
  for i in 1 2 3; do
    if [ -f "$dir/n$i.pid" ] && kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null; then
      echo "node $i already running (pid $(cat "$dir/n$i.pid"))"; continue
    fi
    ip="127.0.0.$i"
    nohup target/release/st2kv-node --id "$i" --data-dir "$dir/n$i" \
      --api-bind "$ip:9101" --auth-bind "$ip:9100" --peer-bind "$ip:9300" \
      --initial-cluster "$members" --admin-password-file "$dir/admin-password" \
      --cluster-secret-file "$dir/cluster-secret" >>"$dir/n$i.log" 2>&1 &
    echo $! >"$dir/n$i.pid"
  done
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:9101/v1/health/ready" 2>/dev/null | grep -q '"leader":[0-9]'; then
      echo "st2kv cluster is up: nodes at http://127.0.0.1, http://127.0.0.2, http://127.0.0.3 (logs in $dir)"
      echo "log in as the admin (password in $dir/admin-password):"
      echo "  target/release/st2kv --url http://127.0.0.1,http://127.0.0.2,http://127.0.0.3 login st2admin -p \"\$(cat $dir/admin-password)\""
      echo "  target/release/st2kv --url http://127.0.0.1,http://127.0.0.2,http://127.0.0.3 key list"
      echo "  ST2_BASE_URL=http://127.0.0.2 st2 login st2admin -p ...   # the real StackStorm CLI, any node"
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
  # The full status is admin-only: log in once for a short-lived token.
  local token=""
  if [ -s "$dir/admin-password" ]; then
    token=$(curl -fsS -u "st2admin:$(cat "$dir/admin-password")" -X POST -d '{"ttl": 60}' \
      http://127.0.0.1:9100/tokens 2>/dev/null | sed -n 's/.*"token":"\([0-9a-f]*\)".*/\1/p') || true
  fi
  for i in 1 2 3; do
    printf 'node %s: ' "$i"
    curl -fsS -H "X-Auth-Token: $token" "http://127.0.0.$i:9101/v1/cluster/status" 2>/dev/null \
      || curl -fsS "http://127.0.0.$i:9101/v1/health/ready" 2>/dev/null || printf 'down'
    echo
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
