#!/usr/bin/env bash
# Sites far apart, side by side: the same local drill (fixture timing: probe 100 ms, fall
# 3, grace 500 ms, lease 1 s; a primary-standby HTTP service at 100 GETs/s with a 2 s
# client timeout; events at 200/s with ack = "replicated") with every link of the drill's
# fault proxy at 0, 40 and 120 ms each way (round trips of 0, 80 and 240 ms), east killed
# at 10 s. Prints per round trip: the downtime a client saw after the kill, requests
# failed under the delay alone, events acknowledged and lost, the Raft terms seen, and
# the round trips the sites measured. Then the relay's throughput with ack = "replicated"
# at the same round trips (bench/relay.sh's far turn, FAR_MS), as a ratio to loopback, and
# what a synchronous PostgreSQL commit costs at them (bench/db-far.sh).
#   bench/ocean.sh [drill runs per round trip (1)] [relay seconds per turn (5)]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
relay_secs=${2:-5}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages python3:python3

backend=crates/outlast/tests/support/backend.py
python3 "$backend" 17710 east >/dev/null 2>&1 & pids+=($!)
python3 "$backend" 17711 west >/dev/null 2>&1 & pids+=($!)
{
  cluster_toml 17700 17701
  printf '[timing]\nprobe_interval = "100ms"\nfall = 3\nrise = 3\ngrace = "500ms"\nlease = "1s"\nfailback_after = "1h"\n'
  printf '[dns]\nzone = "bench.test."\nport = 17703\nttl = 5\n'
  printf '[[services]]\nname = "web"\nprotocol = "http"\nmode = "primary-standby"\nprimary = "east"\nfailback = "manual"\ndns_name = "web"\nport = 17702\n'
  printf 'check = { kind = "http", path = "/", interval = "100ms", timeout = "100ms" }\n'
  printf '[services.backends]\neast = ["127.0.0.1:17710"]\nwest = ["127.0.0.1:17711"]\n'
  printf '[[streams]]\nname = "clicks"\nack = "replicated"\nbatch_age = "200ms"\n'
  printf '[[streams.sinks]]\nurl = "file://%s/sinks/east"\nsite = "east"\n' "$work"
  printf '[[streams.sinks]]\nurl = "file://%s/sinks/west"\nsite = "west"\n' "$work"
} >"$work/outlast.toml"
"$bin" check --config "$work/outlast.toml" >/dev/null

echo "round trip  run  downtime after the kill  failed before it  events acked/lost  Raft terms  measured p99"
for ms in 0 40 120; do
  cat >"$work/ocean.toml" <<TOML
name = "ocean-$ms"
duration = "16s"
[workload]
service = "web"
rate = 100
stream = "clicks"
event_rate = 200
[[steps]]
at = "1s"
fault = "delay"
ms = $ms
[[steps]]
at = "10s"
fault = "kill"
site = "east"
TOML
  for i in $(seq 1 "$runs"); do
    rm -rf "$work/data" "$work/report" "$work/sinks"
    "$bin" drill --config "$work/outlast.toml" --scenario "$work/ocean.toml" --report "$work/report" >/dev/null 2>&1 || true
    python3 - "$work/report/report.json" "$((2 * ms))" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
f = r["faults"]
p99 = max((l.get("rtt_p99_ms_max") or 0) for l in r.get("links", [])) if r.get("links") else 0
print(f'{sys.argv[2]:>7} ms  {sys.argv[3]:>3}  {f[1]["rto_ms"]:>20} ms  {f[0]["rto_ms"]:>13} ms  '
      f'{r["writes"]["acked"]:>10}/{r["writes"]["lost"]:<5}  {len(r.get("leaders", [])):>10}  {p99:>9.1f} ms')
PY
  done
done

echo
echo "relay, ack = replicated, events/s (bench/relay.sh, $relay_secs s a turn):"
for far in 80 240; do
  out=$(FAR_MS=$far OUTLAST_BIN=$bin bench/relay.sh "$relay_secs" 32 2>/dev/null || true)
  echo "$out" | grep -E '^ack=' | sed "s/^/  FAR_MS=$far: /"
done

echo
echo "PostgreSQL, synchronous commits through the gateway (bench/db-far.sh, $relay_secs s a turn):"
OUTLAST_BIN=$bin bench/db-far.sh "$relay_secs" 2>/dev/null | sed 's/^/  /'
