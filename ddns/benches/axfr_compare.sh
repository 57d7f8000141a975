#!/usr/bin/env bash
# AXFR of the same 10 000-record zone, TSIG-signed (hmac-sha256), from headend's server
# and from Knot DNS as primary, both on 127.0.0.1; the client is dig for both (it verifies
# every message's TSIG and parses every record, so its own cost is in both figures).
#
#   bash ddns/benches/axfr_compare.sh [ROUNDS] [TRANSFERS_PER_ROUND]
#
# Prints per round the mean wall time of one transfer for each server, then the medians.
# Needs: knot, dnsutils (Debian), and a release build of the example (built here).
# Uses ports 5310-5311 on 127.0.0.1 only.
set -euo pipefail
ROUNDS=${1:-3}; N=${2:-20}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/ddns-axfr.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
for t in dig knotd; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
SECRET=$(head -c 32 /dev/urandom | base64)
cargo build -q --release -p ddns --example dns_bench_server --manifest-path "$ROOT/Cargo.toml"
SRV="$CARGO_TARGET_DIR/release/examples/dns_bench_server"
"$SRV" --port 5310 --sockets 1 --records 10000 --zone-file "$W/bench.zone" --xfr-secret "$SECRET" >"$W/he.out" 2>&1 &
for _ in $(seq 50); do grep -q listening "$W/he.out" && break; sleep 0.2; done

mkdir -p "$W/knot"
cat >"$W/knot.conf" <<KNOT
server:
    listen: 127.0.0.1@5311
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
key:
  - id: bench-key
    algorithm: hmac-sha256
    secret: $SECRET
acl:
  - id: xfr
    address: 127.0.0.1
    key: bench-key
    action: transfer
zone:
  - domain: bench.example
    storage: "$W"
    file: bench.zone
    acl: xfr
KNOT
knotd -c "$W/knot.conf" >"$W/knot.log" 2>&1 &
sleep 3

axfr() { dig @127.0.0.1 -p "$1" -y "hmac-sha256:bench-key:$SECRET" +noall +answer bench.example AXFR; }
for p in 5310 5311; do
  n=$(axfr $p | grep -c '	A	' || true)
  [ "$n" = "10001" ] || { echo "port $p transferred $n A records, want 10001" >&2; exit 1; }
done
declare -A R
for i in $(seq "$ROUNDS"); do
  for s in headend:5310 knot:5311; do
    t0=$(date +%s%N)
    for _ in $(seq "$N"); do axfr "${s##*:}" >/dev/null; done
    ms=$(( ($(date +%s%N) - t0) / N / 1000000 ))
    R[${s%%:*}]+="$ms "
    echo "round $i ${s%%:*} $ms ms per AXFR"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "date: $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
for s in headend knot; do echo "median $s $(echo ${R[$s]} | median) ms per AXFR (runs: ${R[$s]})"; done
