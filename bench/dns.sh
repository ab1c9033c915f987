#!/usr/bin/env bash
# DNS answers per second: dnsperf against outlast's authoritative DNS and against gdnsd
# (Debian) serving the same records, in turns, in one run. Prints queries/s for each and
# the ratio.
#   bench/dns.sh [seconds per turn (10)]
# Installs gdnsd and dnsperf from Debian when missing. Loopback only; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
# shellcheck source=bench/common.sh
source bench/common.sh
need_packages gdnsd:gdnsd dnsperf:dnsperf

# The same zone for both: db (primary-standby, east), www (active-active, east and west).
mkdir -p "$work/gdnsd/zones"
cat >"$work/gdnsd/config" <<CONF
options => {
  listen => [ 127.0.0.31:5300 ]
  udp_threads => 2
  tcp_threads => 1
}
plugins => {
  geoip => {
    maps => {
      near => {
        datacenters => [east, west]
        nets => {
          198.51.100.0/24 => [west, east]
          203.0.113.0/24 => [east, west]
          10.0.0.0/8 => [west, east]
        }
      }
    }
    resources => {
      near => {
        map => near
        dcmap => { east => 127.0.0.11, west => 127.0.0.12 }
      }
    }
  }
}
CONF
cat >"$work/gdnsd/zones/shop.test" <<ZONE
\$TTL 5
@        SOA ns-east hostmaster 1 60 10 3600 5
@        NS  ns-east
@        NS  ns-west
@        NS  ns-witness
ns-east  A   127.0.0.11
ns-west  A   127.0.0.12
ns-witness A 127.0.0.13
db       A   127.0.0.11
www      A   127.0.0.11
www      A   127.0.0.12
near 5   DYNA geoip!near
ZONE
gdnsd -c "$work/gdnsd" start >"$work/gdnsd.log" 2>&1 & pids+=($!)
gdnsd_pid=$!

python3 crates/outlast/tests/support/backend.py 18090 east >/dev/null 2>&1 & pids+=($!)
python3 crates/outlast/tests/support/backend.py 18091 west >/dev/null 2>&1 & pids+=($!)
{ cluster_toml 18500 18501; cat <<CONF
[dns]
zone = "shop.test."
port = 5300
ttl = 5
[[services]]
name = "db"
mode = "primary-standby"
primary = "east"
dns_name = "db"
port = 18502
[services.backends]
east = ["127.0.0.1:18090"]
west = ["127.0.0.1:18091"]
[[services]]
name = "www"
mode = "active-active"
dns_name = "www"
port = 18503
[services.backends]
east = ["127.0.0.1:18090"]
west = ["127.0.0.1:18091"]
[[services]]
name = "near"
dns_name = "near"
port = 18504
steering = { selector = "nearest" }
[services.backends]
east = ["127.0.0.1:18090"]
west = ["127.0.0.1:18091"]
[dns.networks]
"198.51.100.0/24" = ["west", "east"]
"203.0.113.0/24" = ["east", "west"]
"10.0.0.0/8" = ["west", "east"]
CONF
} >"$work/outlast.toml"
start_agents
east_pid=${pids[-3]}
for _ in $(seq 1 100); do
  a=$(dig @127.0.0.11 -p 5300 +short +time=1 +tries=1 www.shop.test A 2>/dev/null | sort | tr '\n' ' ' || true)
  b=$(dig @127.0.0.31 -p 5300 +short +time=1 +tries=1 www.shop.test A 2>/dev/null | sort | tr '\n' ' ' || true)
  if [ "$a" = "127.0.0.11 127.0.0.12 " ] && [ "$a" = "$b" ]; then break; fi
  sleep 0.2
done
echo "outlast answers: $(dig @127.0.0.11 -p 5300 +short www.shop.test A | sort | tr '\n' ' ')"
echo "gdnsd answers:   $(dig @127.0.0.31 -p 5300 +short www.shop.test A | sort | tr '\n' ' ')"

printf 'db.shop.test A\nwww.shop.test A\nshop.test SOA\nnope.shop.test A\n' >"$work/queries.txt"
run() { # server pid -> "qps lost cpu-µs-per-answer"
  local before after
  before=$(ticks "$2")
  dnsperf -s "$1" -p 5300 -d "$work/queries.txt" -l "$secs" -c 8 -T 2 -q 500 >"$work/perf.out" 2>&1
  after=$(ticks "$2")
  awk -v cpu=$((after - before)) '/Queries per second/ {q = $4} /Queries lost/ {l = $3}
    /Queries completed/ {c = $3} END {print q, l, cpu * 10000 / c}' "$work/perf.out"
}
echo "dnsperf: ${secs}s per turn, 8 clients, 2 threads, 500 outstanding; both servers and dnsperf share 2 cores"
echo "(a lost query is one still unanswered when the turn ends: at most the 500 outstanding)"
g=(); o=()
for _ in 1 2 3; do g+=("$(run 127.0.0.31 "$gdnsd_pid")"); o+=("$(run 127.0.0.11 "$east_pid")"); done
printf '%s\n' "${g[@]}" >"$work/g.txt"; printf '%s\n' "${o[@]}" >"$work/o.txt"
awk 'FNR == 1 {f++} {q[f] += $1; n[f]++; t[f] = t[f] sprintf("%s%.0f", FNR > 1 ? ", " : "", $1); l[f] += $2; c[f] += $3}
  END {
    printf "gdnsd 3.8    %10.0f queries/s   (turns: %s; lost: %d)  %.2f µs CPU per answer\n", q[1] / n[1], t[1], l[1], c[1] / n[1];
    printf "outlast DNS  %10.0f queries/s   (turns: %s; lost: %d)  %.2f µs CPU per answer\n", q[2] / n[2], t[2], l[2], c[2] / n[2];
    printf "ratio outlast/gdnsd: %.2f queries/s, %.2f CPU per answer (below 1 = cheaper)\n", (q[2] / n[2]) / (q[1] / n[1]), (c[2] / n[2]) / (c[1] / n[1]);
  }' "$work/g.txt" "$work/o.txt"

# The steered name: 0%, 50% and 100% of queries with ECS 198.51.100.0/24 (answered west,
# scope /24); the others come from 127.0.0.1 (not listed: east, the first site).
echo
echo "steered name near.shop.test (nearest by network):"
for srv in 127.0.0.11 127.0.0.31; do
  echo "  $srv: $(dig @$srv -p 5300 +short +subnet=198.51.100.7/24 near.shop.test A) for 198.51.100.7/24, $(dig @$srv -p 5300 +short near.shop.test A) without ECS;$(dig @$srv -p 5300 +subnet=198.51.100.7/24 near.shop.test A | grep -o 'CLIENT-SUBNET: .*')"
done
printf 'near.shop.test A\n' >"$work/near.txt"
ecs=8:00011800c63364 # family 1, source /24, scope 0, 198.51.100
steered() { # server pid share -> "qps cpu-µs-per-answer"
  local before after
  before=$(ticks "$2")
  case $3 in
    0) dnsperf -s "$1" -p 5300 -d "$work/near.txt" -l "$secs" -c 8 -T 2 -q 500 >"$work/p1.out" 2>&1; : >"$work/p2.out" ;;
    100) dnsperf -s "$1" -p 5300 -d "$work/near.txt" -l "$secs" -c 8 -T 2 -q 500 -E "$ecs" >"$work/p1.out" 2>&1; : >"$work/p2.out" ;;
    50)
      dnsperf -s "$1" -p 5300 -d "$work/near.txt" -l "$secs" -c 4 -T 1 -q 250 >"$work/p1.out" 2>&1 &
      dnsperf -s "$1" -p 5300 -d "$work/near.txt" -l "$secs" -c 4 -T 1 -q 250 -E "$ecs" >"$work/p2.out" 2>&1
      wait %% 2>/dev/null || true ;;
  esac
  after=$(ticks "$2")
  cat "$work/p1.out" "$work/p2.out" | awk -v cpu=$((after - before)) '/Queries per second/ {q += $4} /Queries completed/ {c += $3}
    END {print q, cpu * 10000 / c}'
}
for share in 0 50 100; do
  g=0; o=0
  for _ in 1 2; do
    g=$(awk -v a="$g" -v b="$(steered 127.0.0.31 "$gdnsd_pid" "$share" | cut -d' ' -f1)" 'BEGIN {print a + b / 2}')
    o=$(awk -v a="$o" -v b="$(steered 127.0.0.11 "$east_pid" "$share" | cut -d' ' -f1)" 'BEGIN {print a + b / 2}')
  done
  awk -v s="$share" -v g="$g" -v o="$o" 'BEGIN { printf "  %3d%% ECS: gdnsd geoip %9.0f q/s   outlast %9.0f q/s   ratio %.2f\n", s, g, o, o / g }'
done
