#!/usr/bin/env bash
# Slow, not dead (issue 46): client-seen failover when the Raft leader's disk is slow.
# Three agents (fixture timing: probe 100 ms, fall 3, grace 500 ms, lease 1 s, max_rtt
# 50 ms, all on this machine), each under a preload shim (bench/slowsync.c) that makes
# every fsync/fdatasync of its process wait as long as a file says. A turn per disk: sound,
# the leader's flushes at 200 ms, at 2 s, and hanging. The leader is moved off east first
# (a 1.5 s SIGSTOP of east when it leads), then its flushes are slowed, then east (primary
# of `web`) is killed while a client sends 100 GETs/s to west's gateway (2 s timeout).
# Prints per turn: the leader, the time from the kill to the first answer of the final
# unbroken run of answers (or "not served" within 14 s), and the requests that failed.
#   bench/slow-disk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages python3:python3 cc:gcc curl:curl
cc -shared -fPIC -O2 -o "$work/slowsync.so" bench/slowsync.c -ldl
backend=crates/outlast/tests/support/backend.py
load=crates/outlast/tests/support/load.py
python3 "$backend" 17910 east >/dev/null 2>&1 & pids+=($!)
python3 "$backend" 17911 west >/dev/null 2>&1 & pids+=($!)

addr() { case $1 in east) echo 11 ;; west) echo 12 ;; *) echo 13 ;; esac; }
status() { curl -sf --max-time 1 "http://127.0.0.$(addr "$1"):17901/v1/status" || true; }
leader() { status "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader") or "")' 2>/dev/null || true; }
acting() {
  status "$1" | python3 -c 'import json,sys; s=json.load(sys.stdin)["services"][0]; print(s["primary"] if s["primary_acting"] else "")' 2>/dev/null || true
}

echo "disk at the leader  leader  served again after the kill  failed"
for turn in 0 200 2000 -1; do
  rm -rf "$work/data"
  {
    cluster_toml 17900 17901
    printf '[timing]\nprobe_interval = "100ms"\nfall = 3\nrise = 3\ngrace = "500ms"\nlease = "1s"\nfailback_after = "1s"\nmax_rtt = "50ms"\n'
    printf '[[services]]\nname = "web"\nprotocol = "http"\nmode = "primary-standby"\nprimary = "east"\nport = 17902\n'
    printf 'check = { kind = "http", path = "/", interval = "100ms", timeout = "100ms" }\n'
    printf '[services.backends]\neast = ["127.0.0.1:17910"]\nwest = ["127.0.0.1:17911"]\n'
  } >"$work/outlast.toml"
  declare -A agent=()
  for s in east west witness; do
    echo 0 >"$work/slow-$s"
    mkdir -p "$work/data/$s"
    OUTLAST_LOG=warn OUTLAST_SLOW_SYNC_FILE="$work/slow-$s" LD_PRELOAD="$work/slowsync.so" \
      "$bin" agent --config "$work/outlast.toml" --site "$s" >"$work/$s.log" 2>&1 &
    agent[$s]=$!
    pids+=($!)
    disown $!
  done
  wait_for_gateway http://127.0.0.12:17902/ 30
  for _ in $(seq 1 50); do [ "$(acting east)" = east ] && [ -n "$(leader east)" ] && break; sleep 0.2; done
  if [ "$(leader west)" = east ]; then
    kill -STOP "${agent[east]}"; sleep 1.5; kill -CONT "${agent[east]}"
    for _ in $(seq 1 50); do [ "$(acting east)" = east ] && [ "$(leader west)" != east ] && [ -n "$(leader west)" ] && break; sleep 0.2; done
  fi
  lead=$(leader west)
  words=sound
  [ "$turn" -gt 0 ] && words="${turn} ms flushes"
  [ "$turn" -lt 0 ] && words="hanging"
  echo "$turn" >"$work/slow-$lead"
  # Let a few flushes be slow (the policy proposes now and then; a tick writes nothing).
  sleep 2
  python3 "$load" 127.0.0.12 17902 100 16 2 >"$work/load.json" &
  lp=$!
  sleep 2
  kill -9 "${agent[east]}"
  wait "$lp" || true
  python3 - "$work/load.json" "$words" "$lead" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
kill = 2.0
after = [x for x in r if x[0] + x[1] >= kill]
failed = [x for x in r if x[2] != "200"]
# The first answer of the final unbroken run of 200s, by answer time, after the kill.
served = None
for x in sorted(after, key=lambda x: x[0] + x[1]):
    if x[2] == "200":
        if served is None:
            served = x[0] + x[1]
    else:
        served = None
took = f"{(served - kill) * 1000:,.0f} ms" if served is not None and served < 15.5 else "not served"
print(f"{sys.argv[2]:>18}  {sys.argv[3]:>6}  {took:>27}  {len(failed):>6}")
PY
  for s in east west witness; do echo 0 >"$work/slow-$s"; kill "${agent[$s]}" 2>/dev/null || true; done
  sleep 1
  for s in east west witness; do kill -9 "${agent[$s]}" 2>/dev/null || true; done
  unset agent
done
