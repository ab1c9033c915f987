#!/usr/bin/env bash
# Site loss of a PostgreSQL primary, Patroni against outlast, in one run on the same
# PostgreSQL: kill -9 of the primary site's manager (Patroni, or outlast's agent) and its
# postmaster, timed from the kill to the first commit a client gets acknowledged (a Python
# client with psycopg2, 2 s timeouts, reconnecting on every error), and the acknowledged
# commits missing afterwards. Patroni at its tuned floor (ttl 20, loop_wait 1,
# retry_timeout 3, synchronous_mode) with etcd on 127.0.0.13; its client finds the primary
# itself (libpq multi-host, target_session_attrs=read-write). outlast with probe 100ms,
# fall 3, grace 500ms, lease 1s, sync replication; its client goes through the surviving
# site's gateway. outlast is tried OUTLAST_RUNS times (default 10), Patroni PATRONI_RUNS
# times (default 3: each run waits out its 20 s ttl).
#   bench/db.sh [OUTLAST_RUNS [PATRONI_RUNS]]
set -euo pipefail
cd "$(dirname "$0")/.."
outlast_runs=${1:-10}
patroni_runs=${2:-3}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages patroni:patroni etcd:etcd-server python3:python3
# Debian's python3 with Debian's psycopg2 (a python3 earlier on the PATH may lack it).
py=/usr/bin/python3
"$py" -c "import psycopg2" 2>/dev/null \
  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-psycopg2 >/dev/null; }
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
chmod 755 "$work"
now_ms() { date +%s%3N; }

# The first acknowledged commit after KILL_MS in writer log FILE, its time minus KILL_MS:
# after the first failed try that followed the kill (a commit the dying server acknowledged
# just after the signal is not the new primary's), or, when no try failed, the first.
first_after() {
  awk -v k="$2" '
    $1 == "err" && $2 > k && !e { e = $2 }
    $1 == "ack" && $3 > k { if (!a) a = $3; if (e && !b) b = $3 }
    END { if (e && b) print b - k; else if (!e && a) print a - k }' "$1"
}
# Acknowledged numbers in FILE missing from the table behind CONNINFO.
lost() {
  local have
  have=$(mktemp)
  "$pgbin/psql" "$2" -Atc "SELECT n FROM seq" >"$have"
  awk '$1 == "ack" { print $2 }' "$1" | sort | comm -23 - <(sort "$have") | wc -l
}
acked() { awk '$1 == "ack"' "$1" | wc -l; }

# Waits up to 60 s for the first acknowledged commit after KILL_MS in FILE (looking from
# 3 s on, so that the writer has seen the kill).
wait_first() {
  local i
  sleep 3
  for ((i = 0; i < 570; i++)); do
    [ -n "$(first_after "$1" "$2")" ] && return 0
    sleep 0.1
  done
  return 1
}

patroni_run() {
  local d=$work/patroni r=$1
  rm -rf "$d" && mkdir -p "$d" && chown postgres: "$d"
  etcd --name bench --data-dir "$d/etcd" --enable-v2=true \
    --listen-client-urls http://127.0.0.13:12379 --advertise-client-urls http://127.0.0.13:12379 \
    --listen-peer-urls http://127.0.0.13:12380 --initial-advertise-peer-urls http://127.0.0.13:12380 \
    --initial-cluster bench=http://127.0.0.13:12380 >"$d/etcd.log" 2>&1 &
  pids+=($!)
  local site addr
  for site in east:11 west:12; do
    addr=127.0.0.${site#*:}
    # Each server its own socket dir: two servers on one port cannot share one.
    mkdir -p "$d/${site%%:*}-sock" && chown postgres: "$d/${site%%:*}-sock"
    cat >"$d/${site%%:*}.yml" <<YML
scope: bench$r
name: ${site%%:*}
restapi: {listen: "$addr:18008", connect_address: "$addr:18008"}
etcd: {host: "127.0.0.13:12379"}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 3
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters: {wal_log_hints: "on", max_wal_senders: 10, max_replication_slots: 10}
  initdb: [{encoding: UTF8}, data-checksums]
  pg_hba:
    - host replication replicator 127.0.0.0/8 md5
    - host all all 127.0.0.0/8 md5
postgresql:
  listen: "$addr:15500"
  connect_address: "$addr:15500"
  data_dir: $d/${site%%:*}-data
  bin_dir: $pgbin
  pgpass: $d/${site%%:*}.pgpass
  authentication:
    replication: {username: replicator, password: rep-pass-123}
    superuser: {username: postgres, password: su-pass-123}
  parameters: {unix_socket_directories: "$d/${site%%:*}-sock", shared_buffers: 16MB}
YML
    chown postgres: "$d/${site%%:*}.yml"
    runuser -u postgres -- patroni "$d/${site%%:*}.yml" >"$d/${site%%:*}.log" 2>&1 &
    pids+=($!)
    [ "$site" = east:11 ] && sleep 8 # east bootstraps, west clones from it
  done
  local conn="host=127.0.0.11,127.0.0.12 port=15500 user=postgres password=su-pass-123 dbname=postgres target_session_attrs=read-write connect_timeout=2"
  local i
  for ((i = 0; i < 120; i++)); do
    curl -sf http://127.0.0.11:18008/primary >/dev/null 2>&1 \
      && curl -sf http://127.0.0.12:18008/sync >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$pgbin/psql" "$conn" -qc "CREATE TABLE IF NOT EXISTS seq (n bigint PRIMARY KEY)"
  sleep 2 # the synchronous standby is chosen
  "$py" bench/db_writer.py "$conn" >"$d/writer.log" 2>/dev/null &
  local writer=$!
  pids+=($writer)
  sleep 3
  local pm k
  pm=$(head -1 "$d/east-data/postmaster.pid")
  k=$(now_ms)
  pkill -9 -f "patroni $d/east.yml" || true
  kill -9 "$pm"
  if wait_first "$d/writer.log" "$k"; then
    sleep 2
    kill "$writer"
    echo "patroni run $r: site loss to first commit $(first_after "$d/writer.log" "$k") ms; $(acked "$d/writer.log") acknowledged, $(lost "$d/writer.log" "$conn") lost"
  else
    kill "$writer"
    echo "patroni run $r: no commit within 60 s of the kill"
  fi
  pkill -9 -f "patroni $d/" || true
  for dd in "$d"/*-data; do [ -f "$dd/postmaster.pid" ] && kill -9 "$(head -1 "$dd/postmaster.pid")" 2>/dev/null || true; done
  pkill -f "etcd --name bench" || true
  sleep 1
}

outlast_run() {
  local d=$work/outlast r=$1
  rm -rf "$d" && mkdir -p "$d"
  {
    cluster_toml 17500 17501
    printf '[timing]\nprobe_interval = "100ms"\nfall = 3\nrise = 3\ngrace = "500ms"\nlease = "1s"\nfailback_after = "1h"\n'
    printf '[[datasets]]\nname = "orders"\nport = 15510\n[datasets.members]\neast = { data_dir = "%s/east-pg" }\nwest = { data_dir = "%s/west-pg" }\n' "$d" "$d"
    printf '[datasets.postgres]\npassword = "app-pass-123"\nallow = ["127.0.0.1"]\nsettings = { shared_buffers = "16MB" }\n'
    printf '[[services]]\nname = "pg"\ndataset = "orders"\nport = 15511\n'
  } >"$d/outlast.toml"
  cp "$work/cluster.key" "$d/"
  local s
  local agent_pids=()
  for s in east west witness; do
    OUTLAST_LOG=warn "$bin" agent --config "$d/outlast.toml" --site "$s" >"$d/$s.log" 2>&1 &
    pids+=($!)
    agent_pids+=($!)
  done
  local direct="host=127.0.0.11 port=15510 user=app password=app-pass-123 dbname=app connect_timeout=2"
  local i
  for ((i = 0; i < 120; i++)); do
    "$bin" status --api http://127.0.0.11:17501 --json 2>/dev/null | python3 -c '
import json,sys
st=json.load(sys.stdin); m={x["site"]:x for x in st["datasets"][0]["members"]}
sys.exit(0 if m["east"]["role"]=="primary" and m["west"].get("sync")=="quorum" else 1)' 2>/dev/null && break
    sleep 0.5
  done
  "$pgbin/psql" "$direct" -qc "CREATE TABLE IF NOT EXISTS seq (n bigint PRIMARY KEY)"
  local conn="host=127.0.0.12 port=15511 user=app password=app-pass-123 dbname=app connect_timeout=2"
  "$py" bench/db_writer.py "$conn" >"$d/writer.log" 2>/dev/null &
  local writer=$!
  pids+=($writer)
  sleep 3
  local pm k
  pm=$(head -1 "$d/east-pg/postmaster.pid")
  k=$(now_ms)
  kill -9 "${agent_pids[0]}" "$pm"
  if wait_first "$d/writer.log" "$k"; then
    sleep 2
    kill "$writer"
    echo "outlast run $r: site loss to first commit $(first_after "$d/writer.log" "$k") ms; $(acked "$d/writer.log") acknowledged, $(lost "$d/writer.log" "$conn") lost"
  else
    kill "$writer"
    echo "outlast run $r: no commit within 60 s of the kill"
  fi
  kill "${agent_pids[1]}" "${agent_pids[2]}" 2>/dev/null || true
  sleep 1
  for dd in "$d"/*-pg; do [ -f "$dd/postmaster.pid" ] && kill -QUIT "$(head -1 "$dd/postmaster.pid")" 2>/dev/null || true; done
  sleep 1
}

results=$work/results
for ((r = 1; r <= patroni_runs || r <= outlast_runs; r++)); do
  ((r <= patroni_runs)) && patroni_run "$r" | tee -a "$results"
  ((r <= outlast_runs)) && outlast_run "$r" | tee -a "$results"
done
# Prints "median worst" of the first-commit times of the runs of TOOL.
figures() {
  awk -v t="$1" '$1 == t && /first commit/ { for (i = 1; i <= NF; i++) if ($i == "commit") print $(i + 1) }' "$results" \
    | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)], a[NR] }'
}
read -r p pw <<<"$(figures patroni)"
read -r o ow <<<"$(figures outlast)"
lost_total=$(awk '/ lost$/ { s += $(NF - 1) } END { print s + 0 }' "$results")
echo "site loss to first commit, median (worst): patroni ${p:-?} (${pw:-?}) ms, outlast ${o:-?} (${ow:-?}) ms; patroni/outlast = $(awk -v p="${p:-0}" -v o="${o:-1}" 'BEGIN { printf "%.1f", p / o }'); acknowledged commits lost in all runs: $lost_total"
