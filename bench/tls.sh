#!/usr/bin/env bash
# What TLS on the peer port costs, in one run: bench/relay.sh with peer traffic in clear
# (PEER_TLS=off) and with mTLS from certificate files (PEER_TLS=certificates), then the
# failover time of a local drill (east killed under an HTTP workload; RTO as the drill's
# clients see it, 2 s timeouts) in both modes, RUNS times each. Prints each figure and the
# ratio mTLS / clear.
#   bench/tls.sh [seconds per relay turn (5)] [connections (32)] [drill runs (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conns=${2:-32}
runs=${3:-3}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages python3:python3
trap cleanup EXIT

declare -A rel rto
for mode in off certificates; do
  echo "== relay, peer traffic: $mode" >&2
  out=$(PEER_TLS=$mode FAR_MS=0 bench/relay.sh "$secs" "$conns" 2>/dev/null)
  echo "$out" | grep -E '^ack=' | sed "s/^/  $mode: /"
  rel[$mode]=$(echo "$out" | awk '/^ack=replicated  /{print $2; exit}')
done

# A drill: web served by east (python backends beside each site), east killed at 4 s.
backend=crates/outlast/tests/support/backend.py
python3 "$backend" 17510 east >/dev/null 2>&1 & pids+=($!)
python3 "$backend" 17511 west >/dev/null 2>&1 & pids+=($!)
cat >"$work/loss.toml" <<'TOML'
name = "tls-cost"
duration = "9s"
[workload]
service = "web"
rate = 100
[[steps]]
at = "4s"
fault = "kill"
site = "east"
TOML
for mode in off certificates; do
  sum=0
  for i in $(seq 1 "$runs"); do
    {
      PEER_TLS=$mode cluster_toml 17500 17501
      printf '[timing]\nprobe_interval = "100ms"\nfall = 3\nrise = 3\ngrace = "500ms"\nlease = "1s"\n'
      printf '[dns]\nzone = "bench.test."\nport = 17503\nttl = 1\n'
      printf '[[services]]\nname = "web"\nprotocol = "http"\nmode = "primary-standby"\nprimary = "east"\nfailback = "manual"\ndns_name = "web"\nport = 17502\n'
      printf 'check = { kind = "http", path = "/", interval = "100ms", timeout = "100ms" }\n'
      printf '[services.backends]\neast = ["127.0.0.1:17510"]\nwest = ["127.0.0.1:17511"]\n'
    } >"$work/outlast.toml"
    if [ "$mode" = certificates ]; then "$bin" certs --config "$work/outlast.toml" >/dev/null; fi
    rm -rf "$work/data" "$work/report"
    "$bin" drill --config "$work/outlast.toml" --scenario "$work/loss.toml" --report "$work/report" >/dev/null 2>&1 || true
    r=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rto_ms"] or 0)' "$work/report/report.json" 2>/dev/null || echo 0)
    echo "  drill $mode run $i: rto_ms $r"
    sum=$((sum + r))
  done
  rto[$mode]=$((sum / runs))
done

echo "relay ack=replicated events/s: clear ${rel[off]}, mTLS ${rel[certificates]}; ratio mTLS/clear $(awk -v a="${rel[certificates]}" -v b="${rel[off]}" 'BEGIN{printf "%.2f", (b>0?a/b:0)}')"
echo "failover (drill RTO, mean of $runs): clear ${rto[off]} ms, mTLS ${rto[certificates]} ms; ratio mTLS/clear $(awk -v a="${rto[certificates]}" -v b="${rto[off]}" 'BEGIN{printf "%.2f", (b>0?a/b:0)}')"
