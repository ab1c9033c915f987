#!/usr/bin/env bash
# What a synchronous PostgreSQL commit costs between far sites: the drill's dataset
# workload (one client, 100 commits/s, one at a time, through east's gateway to the primary
# at east) with every link of the drill's fault proxy delayed, replication between the
# members included, for 0, 40 and 120 ms each way (round trips of 0, 80 and 240 ms). The
# same at 0 ms with `replication = "async"` is the local commit. Prints per turn the
# median and p99 commit and the median's excess over the local one in round trips: a
# synchronous commit should cost one round trip more than a local one, not several.
#   bench/db-far.sh [seconds per turn (10)]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages python3:python3
[ -n "$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null)" ] || need_packages pg_ctlcluster:postgresql
chmod 755 "$work"

config() {
  cluster_toml 17800 17801
  printf '[timing]\nprobe_interval = "100ms"\nfall = 3\nrise = 3\ngrace = "500ms"\nlease = "1s"\nfailback_after = "1h"\n'
  printf '[[datasets]]\nname = "orders"\nport = 17820\nreplication = "%s"\n' "$1"
  printf '[datasets.members]\neast = { data_dir = "east/pg" }\nwest = { data_dir = "west/pg" }\n'
  printf '[datasets.postgres]\npassword = "app-password-1"\nallow = ["127.0.0.1"]\nsettings = { shared_buffers = "16MB" }\n'
  printf '[[services]]\nname = "pg"\ndataset = "orders"\nport = 17821\n'
}

local_p50=
echo "replication  round trip  commits  median commit  p99 commit  median - local"
for turn in async:0 sync:0 sync:40 sync:120; do
  mode=${turn%%:*} ms=${turn#*:}
  # The turn before's servers may still be shutting down: wait for their ports.
  for _ in $(seq 1 100); do
    ss -ltn | grep -qE ':(17800|17801|17820|17821) ' || break
    sleep 0.2
  done
  rm -rf "$work/east" "$work/west" "$work/data" "$work/report"
  config "$mode" >"$work/outlast.toml"
  cat >"$work/far.toml" <<TOML
name = "db-far-$mode-$ms"
duration = "${secs}s"
[workload]
dataset = "orders"
write_rate = 100
[[steps]]
at = "0s"
fault = "delay"
ms = $ms
TOML
  "$bin" drill --config "$work/outlast.toml" --scenario "$work/far.toml" --report "$work/report" >/dev/null 2>"$work/drill.err" || true
  [ -f "$work/report/report.json" ] || { echo "$mode at $((2 * ms)) ms: the drill wrote no report"; tail -5 "$work/drill.err"; continue; }
  python3 - "$work/report/report.json" "$mode" "$((2 * ms))" "$local_p50" "$work/p50" <<'PY'
import json, sys
db = json.load(open(sys.argv[1]))["db"] or {}
rtt = int(sys.argv[3])
p50, p99 = db.get("commit_p50_ms"), db.get("commit_p99_ms")
local = float(sys.argv[4]) if sys.argv[4] else None
excess = ""
if local is not None and p50 is not None:
    extra = p50 - local
    excess = f"{extra:+.1f} ms" + (f" = {extra / rtt:.2f} round trips" if rtt else "")
print(f'{sys.argv[2]:>11}  {rtt:>7} ms  {db.get("acked", 0):>7}  {p50 or 0:>10.1f} ms  {p99 or 0:>7.1f} ms  {excess}')
open(sys.argv[5], "w").write(str(p50 or ""))
PY
  [ "$mode" = async ] && local_p50=$(cat "$work/p50")
done
