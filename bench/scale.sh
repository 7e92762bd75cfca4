# shellcheck shell=bash
# `bench/run.sh --scale N`: st2kv (and etcd, with --compare-etcd) holding N keys of 100 bytes.
# Sourced by run.sh after the clusters are up; uses its variables and start_node / start_etcd.
#
# Measures, per system: the prefix list of 100 keys at 1 000 keys and at N (it should not slow
# down: O(page)); then, in the same store at N keys and alternating (so the machine's drift
# cancels out), lists over the first 1 000 keys' ten prefixes (pages that stay hot) against lists
# over all N keys' prefixes (mostly cold pages); the rate at which N keys were written (128 at a
# time to the leader), each node's resident memory and data-dir size at N keys, the time from
# restarting a follower to it being ready, and the time a new member takes to catch up; for st2kv
# also `st2kv key load` of 100 000 keys.

# now: seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# wait_until SECONDS CMD...: run CMD every 50 ms until it succeeds; fail after SECONDS.
wait_until() {
  local limit="$1" t0
  shift
  t0="$(now)"
  until "$@" >/dev/null 2>&1; do
    if awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
      echo "gave up after ${limit}s waiting for: $*" >&2
      return 1
    fi
    sleep 0.05
  done
}

st2kv_ready() { curl -fsS --max-time 2 "http://$1:9101/v1/health/ready"; }
etcd_healthy() { curl -fsS --max-time 2 "http://$1:2379/health" | grep -q '"health":"true"'; }
etcd_applied() {
  curl -fsS --max-time 2 -X POST -d '{}' "http://$1:2379/v3/maintenance/status" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("raftAppliedIndex") or d.get("raftIndex") or 0)'
}
etcd_caught_up() { [ "$(etcd_applied "$1")" -ge "$2" ]; }

rss_mib() { awk '{ printf "%.0f", $1 / 1024 }' <<<"$(ps -o rss= -p "$1")"; }
du_mib() { du -sk "$1" | awk '{ printf "%.0f", $1 / 1024 }'; }

# The list-100 figures of one bench run: "system ops/s p50 p99" lines.
list_figures() {
  python3 - "$1" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for r in doc["results"]:
    if r["workload"] == "list-100":
        print(r["system"], r["ops_per_s"], r["p50_ms"], r["p99_ms"])
PY
}

# "system hot-p50 all-p50 ratio" lines from the alternating list runs in directory $1.
alternating_figures() {
  python3 - "$1" <<'PY'
import json, statistics, sys
d = sys.argv[1]
p50 = {}
for kind in ("hot", "all"):
    for r in (1, 2, 3):
        for res in json.load(open(f"{d}/list-{kind}{r}.json"))["results"]:
            if res["workload"] == "list-100":
                p50.setdefault(res["system"], {}).setdefault(kind, []).append(res["p50_ms"])
for system, f in p50.items():
    cell = lambda xs: f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]"
    ratio = statistics.median(f["all"]) / statistics.median(f["hot"])
    print(f"{system:<6} {cell(f['hot']):>22} {cell(f['all']):>22} {ratio:>8.2f}x")
PY
}

run_scale() {
  local duration="${SCALE_DURATION:-5}" systems=(st2kv) report="$tmp/scale-report.txt"
  [ "$compare_etcd" = 1 ] && systems+=(etcd)
  local bench=(env "${bench_env[@]}" "$bench_bin" --nodes "$urls" "${target_args[@]}" --rounds 1
    --duration "$duration" --warmup 1 --workloads list-100 --json "${bench_args[@]}")
  echo "== list-100 at 1000 keys" >&2
  "${bench[@]}" --scale-keys 1000 >"$tmp/list-1k.json" 2> >(tee "$tmp/list-1k.err" >&2)
  echo "== writing up to $scale keys, then list-100 at $scale keys" >&2
  "${bench[@]}" --scale-keys "$scale" --scale-from 1000 >"$tmp/list-n.json" 2> >(tee "$tmp/list-n.err" >&2)
  sleep 2
  echo "== at $scale keys, alternating: lists over the first 1000 keys, lists over all $scale" >&2
  local r
  for r in 1 2 3; do
    "${bench[@]}" --scale-keys 1000 --scale-from 1000 >"$tmp/list-hot$r.json" 2>/dev/null
    "${bench[@]}" --scale-keys "$scale" --scale-from "$scale" >"$tmp/list-all$r.json" 2>/dev/null
  done

  {
    echo "Scale: $scale keys of 100 bytes (plus the 1000 read keys), 3 nodes per system"
    echo
    echo "prefix list of 100 keys (16 connections, ${duration}s, linearizable):"
    printf '  %-6s %12s %12s %10s %10s %12s\n' system "ops/s @1k" "ops/s @N" "p50 @1k" "p50 @N" "p50 N/1k"
    while read -r sys ops1 p501 _ && read -r _ opsn p50n _ <&3; do
      printf '  %-6s %12s %12s %10s %10s %11sx\n' "$sys" "$ops1" "$opsn" "$p501" "$p50n" \
        "$(awk -v a="$p50n" -v b="$p501" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')"
    done < <(list_figures "$tmp/list-1k.json") 3< <(list_figures "$tmp/list-n.json")
    echo
    echo "the same at $scale keys, alternating 3 times (median p50 ms [min-max]):"
    printf '  %-6s %22s %22s %9s\n' system "first 1000 keys" "all $scale keys" "all/first"
    alternating_figures "$tmp" | sed 's/^/  /'
    echo
    echo "writing the keys (128 at a time, to the leader):"
    grep -hE "wrote .* keys in|were retried" "$tmp/list-n.err" | sed "s/^ */  /"
    echo
    echo "at $scale keys, per node: resident memory (MiB), data dir (MiB):"
    for i in 1 2 3; do
      printf '  st2kv n%s: %6s MiB RSS %6s MiB data\n' "$i" "$(rss_mib "${pids[$((i - 1))]}")" "$(du_mib "$tmp/n$i")"
    done
    if [ "$compare_etcd" = 1 ]; then
      for i in 1 2 3; do
        printf '  etcd  e%s: %6s MiB RSS %6s MiB data\n' "$i" "$(rss_mib "${pids[$((i + 2))]}")" "$(du_mib "$tmp/etcd$i")"
      done
    fi
  } | tee "$report" >&2

  # Restart a follower (SIGTERM, start again) and time it to ready.
  local t0 follower=2
  [ "$leader" = 2 ] && follower=3
  kill -TERM "${pids[$((follower - 1))]}"
  wait "${pids[$((follower - 1))]}" 2>/dev/null || true
  t0="$(now)"
  start_node "$follower" --initial-cluster "$members"
  pids[$((follower - 1))]=$!
  wait_until 120 st2kv_ready "127.0.1.$follower"
  echo "restart to ready: st2kv node $follower $(elapsed "$t0") s (SIGTERM, start, /v1/health/ready 200)" | tee -a "$report" >&2
  if [ "$compare_etcd" = 1 ]; then
    kill -TERM "${pids[4]}"
    wait "${pids[4]}" 2>/dev/null || true
    t0="$(now)"
    start_etcd 2 "$etcd_cluster" new
    pids[4]=$!
    wait_until 120 etcd_healthy 127.0.2.2
    echo "restart to ready: etcd member e2 $(elapsed "$t0") s (SIGTERM, start, /health true)" | tee -a "$report" >&2
  fi

  # A new member catches up.
  t0="$(now)"
  start_node 4 --join "127.0.1.1:9300"
  pids+=("$!")
  wait_until 600 st2kv_ready 127.0.1.4
  echo "new member caught up: st2kv node 4 $(elapsed "$t0") s (start with --join, to /v1/health/ready 200)" | tee -a "$report" >&2
  if [ "$compare_etcd" = 1 ]; then
    local target_index
    target_index="$(etcd_applied 127.0.2.1)"
    t0="$(now)"
    ETCDCTL_API=3 etcdctl --endpoints "http://127.0.2.1:2379" member add e4 \
      --peer-urls "http://127.0.2.4:2380" >/dev/null
    start_etcd 4 "$etcd_cluster,e4=http://127.0.2.4:2380" existing
    pids+=("$!")
    wait_until 600 etcd_caught_up 127.0.2.4 "$target_index"
    echo "new member caught up: etcd member e4 $(elapsed "$t0") s (member add, start, applied index >= the leader's at the start)" | tee -a "$report" >&2
  fi

  # `st2kv key load` of 100 000 keys through node 1.
  python3 - "$tmp/load.json" <<'PY'
import json, sys
json.dump([{"name": "load-%06d" % i, "value": "v" * 100} for i in range(100000)], open(sys.argv[1], "w"))
PY
  local cred=()
  if [ "${NO_AUTH:-0}" != 1 ]; then
    local token
    token="$(curl -fsS --retry 10 --retry-delay 1 -u "st2admin:$admin_password" -X POST -H 'content-type: application/json' -d '{}' \
      http://127.0.1.1:9100/tokens | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
    cred=(-t "$token")
  fi
  t0="$(now)"
  "$cli_bin" --url http://127.0.1.1,http://127.0.1.2,http://127.0.1.3 "${cred[@]}" --skip-config \
    key load "$tmp/load.json" >/dev/null
  local secs
  secs="$(elapsed "$t0")"
  echo "st2kv key load of 100000 keys: ${secs} s ($(awk -v s="$secs" 'BEGIN { printf "%.0f", 100000 / s }') keys/s)" | tee -a "$report" >&2
  echo >&2
  cat "$report"
}
