#!/usr/bin/env bash
# Relay ingest: events/s acknowledged with ack = "local" and ack = "replicated" (batches of
# 100 events of about 200 bytes, POSTed by wrk), beside the disk's own fsync'd sequential
# write rate measured in the same run on the same filesystem; p50 and p99 ack latency; the
# CPU each site spends per event and how idle the machine was during each turn. A last
# turn sends with ack = "replicated" while every peer call of east's waits FAR_MS (20) ms
# first (an injected delay: the round trip a second region adds), with 8 times the
# connections (a client fleet keeps that many more events in flight).
#   [FAR_MS=20] bench/relay.sh [seconds per turn (10)] [connections (32)]
# The spools live under target/bench-relay (the real disk, not a tmpfs). Shipping runs
# during the turns (file:// sinks on the same disk), as it would in production.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
far_ms=${FAR_MS:-20}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages wrk:wrk python3:python3
data=$PWD/target/bench-relay
rm -rf "$data" && mkdir -p "$data"
trap 'cleanup; rm -rf "$data"' EXIT

{
  cluster_toml 17400 17401
  printf '[api]\ntoken = "bench-token-0123456789abcdef"\n' # for /v1/faults
  for s in local replicated; do
    printf '[[streams]]\nname = "%s"\nack = "%s"\nmax_spool_bytes = 8000000000\n' "$s" "$s"
    printf '[[streams.sinks]]\nurl = "file://%s/sink-east"\nsite = "east"\n' "$data"
    printf '[[streams.sinks]]\nurl = "file://%s/sink-west"\nsite = "west"\n' "$data"
  done
} >"$work/outlast.toml"
# Spools on the real disk.
sed -i "s|^api_port = 17401|api_port = 17401\ndata_dir = \"$data/SITE\"|" "$work/outlast.toml"
awk '/^name = "/{site=$3; gsub(/"/,"",site)} {gsub(/SITE/, site); print}' "$work/outlast.toml" >"$work/o.toml"
mv "$work/o.toml" "$work/outlast.toml"
make_certs
"$bin" check --config "$work/outlast.toml" >/dev/null
start_agents
site_pids=("${pids[-3]}" "${pids[-2]}" "${pids[-1]}") # east (takes the events), west, witness
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.11:17401/v1/status 2>/dev/null | grep -q '"leader":"' && break
  sleep 0.1
done

# One request: 100 events of about 200 bytes, without ids (the site assigns them).
python3 - "$work/body.ndjson" <<'PY'
import json, sys
line = json.dumps({"type": "click", "campaign": "autumn-sale", "url": "https://shop.test/p/12345?utm_source=news", "ua": "Mozilla/5.0 (X11; Linux x86_64) outlast-bench", "pad": "x" * 40})
open(sys.argv[1], "w").write((line + "\n") * 100)
PY
body_bytes=$(stat -c %s "$work/body.ndjson")
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-ndjson"
local f = io.open("$work/body.ndjson", "rb"); wrk.body = f:read("*a"); f:close()
LUA

# The disk: sequential writes with an fsync after each, in the same folder as the spools.
disk() {
  python3 - "$data/disk-probe" "$1" "$secs" <<'PY'
import os, sys, time
path, size, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
buf = b"x" * size
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
n, start = 0, time.monotonic()
while time.monotonic() - start < secs:
    os.write(fd, buf); os.fdatasync(fd); n += 1
el = time.monotonic() - start
os.close(fd); os.unlink(path)
print(f"{n * size / el:.0f} {n / el:.0f}")
PY
}

# CPU (1/100 s) each site has used so far, space-separated.
site_ticks() { local p; for p in "${site_pids[@]}"; do printf '%s ' "$(ticks "$p")"; done; }

# Waits (up to 30 s) until the sites are nearly idle: replication and shipping of one
# turn's events must not be billed to the next turn.
settle() { # says on stderr how long it waited
  local t0=$SECONDS
  local i a b
  for i in $(seq 1 60); do
    a=$(site_ticks | awk '{print $1 + $2 + $3}')
    sleep 0.5
    b=$(site_ticks | awk '{print $1 + $2 + $3}')
    if [ $((b - a)) -le 5 ]; then echo "settled in $((SECONDS - t0)) s" >&2; return 0; fi
  done
}

# The machine's CPU time so far (1/100 s): "idle all", idle counting iowait.
machine_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t}' /proc/stat; }

turn() { # stream -> "events/s bytes/s p50_ms p99_ms non2xx east_us west_us witness_us idle%" (CPU per event)
  local before after m0 m1
  before=$(site_ticks)
  m0=$(machine_ticks)
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" "http://127.0.0.11:17401/v1/streams/$1/events" >"$work/wrk-$1.out"
  m1=$(machine_ticks)
  after=$(site_ticks)
  awk -v bb="$body_bytes" -v before="$before" -v after="$after" -v m0="$m0" -v m1="$m1" '
    function ms(v) { if (v ~ /us$/) {sub(/us$/,"",v); return v/1000} if (v ~ /ms$/) {sub(/ms$/,"",v); return v} sub(/s$/,"",v); return v*1000 }
    /^Requests\/sec/ {rps=$2}
    /requests in/ {n=$1}
    $1=="50%" {p50=ms($2)} $1=="99%" {p99=ms($2)}
    /Non-2xx/ {bad=$NF}
    END {
      split(before, b, " "); split(after, a, " ");
      printf "%.0f %.0f %.2f %.2f %d", rps*100, rps*bb, p50, p99, bad;
      for (i = 1; i <= 3; i++) printf " %.2f", (a[i] - b[i]) * 10000 / (n * 100);
      split(m0, x, " "); split(m1, y, " ");
      printf " %.0f\n", (y[2] > x[2]) ? (y[1] - x[1]) * 100 / (y[2] - x[2]) : 0 }' "$work/wrk-$1.out"
}

# East's replication frames to west so far for a stream: "frames events".
frames() {
  curl -sf http://127.0.0.11:17401/metrics | awk -v s="$1" '
    index($0, "{stream=\"" s "\",peer=\"west\"}") {
      if ($1 ~ /^outlast_relay_replicate_frames_total/) f = $2
      if ($1 ~ /^outlast_relay_replicate_events_total/) e = $2 }
    END { print f + 0, e + 0 }'
}

echo "relay bench: ${secs}s per turn, $conns connections, requests of 100 events ($body_bytes bytes)"
read -r disk_big_bps _ < <(disk 1048576)
read -r disk_req_bps disk_req_fps < <(disk "$body_bytes")
read -r l_eps l_bps l_p50 l_p99 l_bad l_ce l_cw l_cx l_idle < <(turn local)
settle
read -r r_eps r_bps r_p50 r_p99 r_bad r_ce r_cw r_cx r_idle < <(turn replicated)
settle
read -r l_frames l_fev < <(frames local)
read -r r_frames r_fev < <(frames replicated)
curl -sf -X POST -H "Authorization: Bearer bench-token-0123456789abcdef" \
  -H "content-type: application/json" \
  -d "{\"kind\":\"delay\",\"ms\":$far_ms,\"to\":[\"west\",\"witness\"],\"for_ms\":$(((secs + 5) * 1000))}" \
  http://127.0.0.11:17401/v1/faults >/dev/null
read -r f_eps f_bps f_p50 f_p99 f_bad _ < <(conns=$((conns * 8)) turn replicated)
read -r f_frames f_fev < <(frames replicated)
awk -v db="$disk_big_bps" -v dr="$disk_req_bps" -v df="$disk_req_fps" -v bb="$body_bytes" \
    -v le="$l_eps" -v lb="$l_bps" -v l50="$l_p50" -v l99="$l_p99" -v lx="$l_bad" \
    -v re="$r_eps" -v rb="$r_bps" -v r50="$r_p50" -v r99="$r_p99" -v rx="$r_bad" \
    -v lce="$l_ce" -v lcw="$l_cw" -v lcx="$l_cx" -v rce="$r_ce" -v rcw="$r_cw" -v rcx="$r_cx" \
    -v li="$l_idle" -v ri="$r_idle" -v fe="$f_eps" -v fb="$f_bps" -v f50="$f_p50" -v f99="$f_p99" \
    -v fx="$f_bad" -v fms="$far_ms" -v fc="$((conns * 8))" \
    -v lfr="$l_frames" -v lfe="$l_fev" -v rfr="$r_frames" -v rfe="$r_fev" \
    -v ffr="$((f_frames - r_frames))" -v ffe="$((f_fev - r_fev))" 'BEGIN {
  printf "disk, 1 MiB writes + fdatasync      %8.1f MB/s\n", db/1e6;
  printf "disk, %d-byte writes + fdatasync  %8.1f MB/s  (%.0f fsyncs/s)\n", bb, dr/1e6, df;
  printf "ack=local       %9.0f events/s  %7.1f MB/s  p50 %6.2f ms  p99 %6.2f ms  non-2xx %d\n", le, lb/1e6, l50, l99, lx;
  printf "ack=replicated  %9.0f events/s  %7.1f MB/s  p50 %6.2f ms  p99 %6.2f ms  non-2xx %d\n", re, rb/1e6, r50, r99, rx;
  printf "ack=replicated, peers %d ms away (%d connections)  %9.0f events/s  %7.1f MB/s  p50 %6.2f ms  p99 %6.2f ms  non-2xx %d\n", fms, fc, fe, fb/1e6, f50, f99, fx;
  printf "ratio acked/disk(1 MiB + fsync): local %.2f, replicated %.2f\n", lb/db, rb/db;
  printf "ratio acked/disk(request-size + fsync): local %.2f, replicated %.2f\n", lb/dr, rb/dr;
  printf "CPU per event (µs; the three sites share these 2 cores with wrk):\n";
  printf "  ack=local       east %.2f  west %.2f  witness %.2f\n", lce, lcw, lcx;
  printf "  ack=replicated  east %.2f  west %.2f  witness %.2f\n", rce, rcw, rcx;
  printf "replication frames east -> west (mean events per frame): local %.0f, replicated %.0f, peers %d ms away %.0f\n", lfe/(lfr>0?lfr:1), rfe/(rfr>0?rfr:1), fms, ffe/(ffr>0?ffr:1);
  printf "machine idle during the turn (near 0: bound by CPU, not by the disk): local %d%%, replicated %d%%\n", li, ri;
}'
