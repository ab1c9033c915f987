#!/usr/bin/env bash
# Whether memory grows with the events that pass: three sites, a stream with
# ack = "replicated" and a file:// sink per data site, a sender at RATE events/s in POSTs
# of 100 events to east, and every site's resident set each minute. A sound agent levels
# off at a figure set by its windows (dedup_window) and its spool, not by how many events
# ever passed; the last lines compare minute 10 (or the middle) with the end.
#   [DEDUP_WINDOW=10m] bench/relay-memory.sh [minutes (30)] [events/s (1000)]
# Binds loopback only; stops everything it started by pid; the spools and sinks live in a
# temporary dir.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
rate=${2:-1000}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages python3:python3

{
  cluster_toml 17600 17601
  printf '[[streams]]\nname = "clicks"\nack = "replicated"\ndedup_window = "%s"\n' "${DEDUP_WINDOW:-10m}"
  printf '[[streams.sinks]]\nurl = "file://%s/sink-east"\nsite = "east"\n' "$work"
  printf '[[streams.sinks]]\nurl = "file://%s/sink-west"\nsite = "west"\n' "$work"
} >"$work/outlast.toml"
"$bin" check --config "$work/outlast.toml" >/dev/null
start_agents
site_pids=("${pids[-3]}" "${pids[-2]}" "${pids[-1]}")
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.11:17601/v1/status 2>/dev/null | grep -q '"leader":"' && break
  sleep 0.1
done

# The sender: RATE events/s in POSTs of 100 (fresh ids, about 200 bytes each), keep-alive.
python3 - "$rate" "$((minutes * 60))" >"$work/sender.log" 2>&1 <<'PY' &
import http.client, json, sys, time, uuid
rate, secs = int(sys.argv[1]), int(sys.argv[2])
per_post = 100
every = per_post / rate
conn = http.client.HTTPConnection("127.0.0.11", 17601, timeout=5)
start = time.monotonic(); n = sent = refused = 0
while time.monotonic() - start < secs:
    body = "".join(json.dumps({"id": str(uuid.uuid4()), "type": "click", "url": "https://shop.test/p/12345", "pad": "x" * 100}) + "\n" for _ in range(per_post))
    try:
        conn.request("POST", "/v1/streams/clicks/events", body, {"Content-Type": "application/x-ndjson"})
        r = conn.getresponse(); r.read()
        if r.status == 200: sent += per_post
        else: refused += 1
    except Exception:
        refused += 1
        conn = http.client.HTTPConnection("127.0.0.11", 17601, timeout=5)
    n += 1
    due = start + n * every
    d = due - time.monotonic()
    if d > 0: time.sleep(d)
print(f"sent {sent} events, {refused} refused POSTs")
PY
sender=$!
pids+=("$sender")

rss() { awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }
declare -A at
echo "minute  east MB  west MB  witness MB"
for m in $(seq 0 "$minutes"); do
  line=$(printf '%6d' "$m")
  for i in 0 1 2; do
    v=$(rss "${site_pids[$i]}")
    at[$m,$i]=$v
    line+=$(printf '  %7d' "$v")
  done
  echo "$line"
  [ "$m" -lt "$minutes" ] && sleep 60
done
wait "$sender" || true
cat "$work/sender.log"
ref=$((minutes >= 20 ? 10 : minutes / 2))
for i in 0 1 2; do
  name=(east west witness)
  echo "${name[$i]}: ${at[$ref,$i]} MB at minute $ref, ${at[$minutes,$i]} MB at minute $minutes ($((at[$minutes,$i] - at[$ref,$i])) MB)"
done
