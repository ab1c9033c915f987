#!/usr/bin/env bash
# Backup and restore speed, outlast against restic 0.14, in one run on the same data and the
# same disk: a directory of mixed files (BENCH_MB, default 1024: 60% large random files, 30%
# small random files, 10% text) and, when PostgreSQL is installed, a PostgreSQL base backup
# (pgbench at scale BENCH_PG_SCALE, default 60, taken with pg_basebackup into a directory).
# Each set goes to a fresh local repository: a first snapshot, a second of the unchanged
# data (incremental), and a restore into an empty directory.
#
# outlast: its agent on a one-data-site cluster (east; west and witness are witnesses) takes
# the snapshot the config schedules at start, verifies it (timed too), and then takes one
# asked for through `outlast backup run`; the time is the agent's own for the repository
# (open, snapshot and the prune that follows every run). Restore: `outlast restore` with
# the agents stopped, wall clock.
# restic: `restic backup` and `restic restore latest`, wall clock (no prune).
#   bench/backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages restic:restic curl:curl jq:jq
mb=${BENCH_MB:-1024}
scale=${BENCH_PG_SCALE:-60}
token=bench-token-0123456789abcdef
echo "bench pass 1" >"$work/pass"
chmod 755 "$work"
now_ms() { date +%s%3N; }

make_files() {
  local d=$1 big=$((mb * 6 / 10)) small=$((mb * 3 / 10)) text=$((mb / 10)) i
  mkdir -p "$d/big" "$d/small" "$d/text"
  for ((i = 0; i < big / 32; i++)); do head -c $((32 << 20)) /dev/urandom >"$d/big/f$i.bin"; done
  for ((i = 0; i < small * 10; i++)); do head -c $((100 << 10)) /dev/urandom >"$d/small/s$i.bin"; done
  for ((i = 0; i < text; i++)); do (yes "line $i of some log text that compresses well" || true) | head -c $((1 << 20)) >"$d/text/t$i.log"; done
}

make_pgbase() {
  local d=$1 pgbin
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  mkdir -p "$work/pg" && chown postgres: "$work/pg"
  runuser -u postgres -- "$pgbin/initdb" -D "$work/pg/data" -A trust >/dev/null
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" -o "-p 17690 -k $work/pg -c listen_addresses=''" -l "$work/pg/log" -w start >/dev/null
  runuser -u postgres -- "$pgbin/pgbench" -h "$work/pg" -p 17690 -i -s "$scale" -q postgres >/dev/null 2>&1
  mkdir -p "$d" && chown postgres: "$d"
  runuser -u postgres -- "$pgbin/pg_basebackup" -h "$work/pg" -p 17690 -D "$d/base" -X stream -c fast
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" -m fast -w stop >/dev/null
}

# The size of DIR in MB (apparent).
size_mb() { du -sb "$1" | awk '{printf "%.0f", $1 / 1e6}'; }

# Waits (up to 10 min) for the jq FIELD of east's /v1/backups and prints it; exits 1 with
# east's log when it never comes.
# usage: wait_field PORT_BASE DIR FIELD
wait_field() {
  local v="" i
  for ((i = 0; i < 3000; i++)); do
    v=$(curl -sf -H "Authorization: Bearer $token" "http://127.0.0.11:$(($1 + 1))/v1/backups" \
      | jq -r "$3 // empty" 2>/dev/null || true)
    [ -n "$v" ] && { echo "$v"; return 0; }
    sleep 0.2
  done
  echo "no $3 from outlast; east's log:" >&2
  cat "$2/east.log" >&2
  exit 1
}

# usage: bench_set NAME DIR PORT_BASE
bench_set() {
  local name=$1 dir=$2 b=$3 size t0 t1
  size=$(size_mb "$dir")
  local d=$work/run-$name
  mkdir -p "$d"
  {
    echo "bench-secret-0123456789abcdef" >"$d/cluster.key"
    printf '[cluster]\nname = "bench"\nsecret_file = "cluster.key"\n'
    printf '[[sites]]\nname = "east"\naddress = "127.0.0.11"\npeer_port = %s\napi_port = %s\n' "$b" $((b + 1))
    printf '[[sites]]\nname = "west"\naddress = "127.0.0.12"\npeer_port = %s\napi_port = %s\nwitness = true\n' "$b" $((b + 1))
    printf '[[sites]]\nname = "witness"\naddress = "127.0.0.13"\npeer_port = %s\napi_port = %s\nwitness = true\n' "$b" $((b + 1))
    printf '[api]\ntoken = "%s"\n' "$token"
    printf '[[backups]]\nname = "%s"\nsource = "path:%s"\nevery = "24h"\nverify_every = "24h"\nkeep = { last = 100 }\n' "$name" "$dir"
    printf '[[backups.repos]]\nurl = "file://%s/repo-outlast"\npassword_file = "%s"\n' "$d" "$work/pass"
  } >"$d/outlast.toml"
  local s
  for s in east west witness; do
    OUTLAST_LOG=warn "$bin" agent --config "$d/outlast.toml" --site "$s" >"$d/$s.log" 2>&1 & pids+=($!)
  done
  # The first snapshot: scheduled at the agent's start. The agent then verifies it at once
  # (a restore, every chunk re-hashed): wait for that too, so that it does not share the
  # machine with the timed runs below.
  local first verify
  first=$(wait_field "$b" "$d" '.[0].last_ok.repos[0].duration_ms')
  verify=$(wait_field "$b" "$d" '.[0].verify_ok.restore_ms')
  local second
  second=$(OUTLAST_TOKEN=$token "$bin" backup run "$name" --api "http://127.0.0.11:$((b + 1))" >/dev/null \
    && curl -sf -H "Authorization: Bearer $token" "http://127.0.0.11:$((b + 1))/v1/backups" | jq -r '.[0].last_ok.repos[0].duration_ms')
  t0=$(now_ms)
  "$bin" restore --config "$d/outlast.toml" "$name" --to "$d/restore-outlast" >/dev/null 2>&1
  t1=$(now_ms)
  local o_restore=$((t1 - t0))
  for p in "${pids[@]: -3}"; do kill "$p" 2>/dev/null || true; done

  restic -r "$d/repo-restic" --password-file "$work/pass" init -q
  t0=$(now_ms)
  restic -r "$d/repo-restic" --password-file "$work/pass" --no-cache backup -q "$dir" >/dev/null
  t1=$(now_ms)
  local r_first=$((t1 - t0))
  t0=$(now_ms)
  restic -r "$d/repo-restic" --password-file "$work/pass" --no-cache backup -q "$dir" >/dev/null
  t1=$(now_ms)
  local r_second=$((t1 - t0))
  t0=$(now_ms)
  restic -r "$d/repo-restic" --password-file "$work/pass" --no-cache restore latest --target "$d/restore-restic" >/dev/null
  t1=$(now_ms)
  local r_restore=$((t1 - t0))
  diff -r "$dir" "$d/restore-outlast" >&2 || { echo "outlast's restore of $name differs from the source" >&2; exit 1; }

  rate() { awk -v s="$1" -v ms="$2" 'BEGIN { printf "%7.1f MB/s (%6d ms)", s / (ms / 1000), ms }'; }
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", b / a }'; }
  printf '%s (%s MB)\n' "$name" "$size"
  printf '  first snapshot   outlast %s   restic %s   outlast/restic speed %s\n' "$(rate "$size" "$first")" "$(rate "$size" "$r_first")" "$(ratio "$first" "$r_first")"
  printf '  unchanged again  outlast %s   restic %s   outlast/restic speed %s\n' "$(rate "$size" "$second")" "$(rate "$size" "$r_second")" "$(ratio "$second" "$r_second")"
  printf '  restore          outlast %s   restic %s   outlast/restic speed %s\n' "$(rate "$size" "$o_restore")" "$(rate "$size" "$r_restore")" "$(ratio "$o_restore" "$r_restore")"
  printf '  verify           outlast %s   (restore into a scratch dir and re-hash every chunk; restic has no such step)\n' "$(rate "$size" "$verify")"
  printf '  repository size  outlast %s MB   restic %s MB\n' "$(size_mb "$d/repo-outlast")" "$(size_mb "$d/repo-restic")"
  rm -rf "$d/restore-outlast" "$d/restore-restic"
}

echo "restic: $(restic version | head -1)"
echo "making ${mb} MB of mixed files..."
make_files "$work/files"
bench_set files "$work/files" 17700
if ls /usr/lib/postgresql/*/bin/pg_basebackup >/dev/null 2>&1; then
  echo "making a PostgreSQL base backup (pgbench scale $scale)..."
  make_pgbase "$work/pgbase"
  bench_set pgbase "$work/pgbase/base" 17710
else
  echo "PostgreSQL is not installed: the base backup set is skipped"
fi
