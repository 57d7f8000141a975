#!/usr/bin/env bash
# DNS benchmark for BENCHMARKS.md "DNS": dnsperf with the same query file and settings
# against headend's server (ddns/examples/dns_bench_server.rs), NSD and Knot serving the
# same 10 000-record zone, each with ONE server thread, on 127.0.0.1.
# Rounds alternate headend, NSD, Knot; the median of the rounds is reported per server.
#
#   bash ddns/benches/dnsperf_compare.sh [rounds=3] [seconds=10] [clients=4]
#
# Needs: dnsperf, nsd, knot (Debian packages), and a release build of the example
# (built here). Uses ports 5300-5302 on 127.0.0.1 only.
set -euo pipefail
ROUNDS=${1:-3}; SECS=${2:-10}; CLIENTS=${3:-4}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/ddns-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
for t in dnsperf nsd knotd; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
cargo build -q --release -p ddns --example dns_bench_server --manifest-path "$ROOT/Cargo.toml"
SRV="$CARGO_TARGET_DIR/release/examples/dns_bench_server"

# headend writes the zone file and the query file so all three serve identical data
"$SRV" --port 5300 --sockets 1 --records 10000 --zone-file "$W/bench.zone" --query-file "$W/bench.queries" >"$W/he.out" 2>&1 &
HE=$!
for _ in $(seq 50); do grep -q listening "$W/he.out" && break; sleep 0.2; done

cat >"$W/nsd.conf" <<NSD
server:
    ip-address: 127.0.0.1@5301
    server-count: 1
    username: ""
    zonesdir: "$W"
    database: ""
    pidfile: "$W/nsd.pid"
    xfrdfile: "$W/xfrd.state"
    zonelistfile: "$W/zone.list"
    logfile: "$W/nsd.log"
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: bench.example
    zonefile: bench.zone
NSD
nsd -d -c "$W/nsd.conf" & NSDPID=$!

mkdir -p "$W/knot"
cat >"$W/knot.conf" <<KNOT
server:
    listen: 127.0.0.1@5302
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    rundir: "$W/knot"
    user: root
log:
  - target: stderr
    any: error
database:
    storage: "$W/knot"
zone:
  - domain: bench.example
    storage: "$W"
    file: bench.zone
KNOT
knotd -c "$W/knot.conf" >"$W/knot.log" 2>&1 & KNOTPID=$!
sleep 3
for p in 5300 5301 5302; do
  a=$(dig +short @127.0.0.1 -p $p gw-00042.bench.example A)
  [ "$a" = "10.0.0.42" ] || { echo "server on port $p answers '$a'" >&2; exit 1; }
done

declare -A R
run() { dnsperf -s 127.0.0.1 -p "$2" -d "$W/bench.queries" -c "$CLIENTS" -l "$SECS" 2>&1 \
        | awk '/Queries per second/ {print int($4)}'; }
for i in $(seq "$ROUNDS"); do
  for s in headend:5300 nsd:5301 knot:5302; do
    q=$(run "${s%%:*}" "${s##*:}")
    R[${s%%:*}]+="$q "
    echo "round $i ${s%%:*} $q qps"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "date: $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
for s in headend nsd knot; do echo "median $s $(echo ${R[$s]} | median) qps (runs: ${R[$s]})"; done
