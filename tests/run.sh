#!/usr/bin/env bash
# The whole test suite in one command (README "Testing"; .ci/run calls exactly this).
#
#   sudo tests/run.sh [extra cargo test args]
#
# Runs as root on Debian: installs the real peers and reference tools the integration
# tests use when any is missing (strongSwan, Knot, NSD, Unbound, dig, dnsperf, iperf3,
# nftables, iproute2), reaps network namespaces left by killed test runs, then runs
# `cargo test --workspace` (debug build) and prints a summary. Fails loudly: a missing
# tool makes the tests that need it FAIL, never skip.
#
# Environment: RUST_TEST_THREADS (default 2: the namespace tests are timing-sensitive on
# two cores), HEADEND_TEST_TIMEOUT (default 1800 s for the whole cargo run),
# HEADEND_KEEP_LOGS=1 keeps every test's logs under $TMPDIR/headend-tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

say() { printf '\n==== %s\n' "$*"; }
die() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "tests/run.sh must run as root (network namespaces, veth, mounts): sudo tests/run.sh"
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"

# --- 1. Debian packages --------------------------------------------------------------
PKGS=(
  strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
  libstrongswan-standard-plugins charon-cmd strongswan-pki openssl
  knot nsd unbound dnsutils dnsperf iperf3 nftables iproute2 procps util-linux iputils-ping
  systemd  # systemd-analyze verify of examples/headend.service (tests/daemon_ops.rs)
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]}"
  command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
  # Keep the packaged daemons (charon, knot, nsd, unbound) from starting system-wide
  # services on install: the tests start their own instances in namespaces.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  set +e
  apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"
  rc=$?
  set -e
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || die "apt-get install failed (rc $rc) for: ${missing[*]}"
else
  say "all test packages present"
fi

# strongSwan's Debian AppArmor profiles keep charon/swanctl away from the per-test files
# under $TMPDIR; where AppArmor is active, unload those two profiles for the test run.
if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ] &&
   grep -qs 'ipsec/charon\|swanctl' /sys/kernel/security/apparmor/profiles; then
  say "AppArmor confines charon/swanctl: unloading their profiles for the tests"
  for p in usr.lib.ipsec.charon usr.sbin.swanctl; do
    [ -e "/etc/apparmor.d/$p" ] && apparmor_parser -R "/etc/apparmor.d/$p" 2>/dev/null || true
  done
fi

# --- 2. Leftovers of killed runs -----------------------------------------------------
# Test namespaces are named het-<pid>-<seq>-<role>; remove those whose test process is gone.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^het-' || true); do
  pid=${ns#het-}; pid=${pid%%-*}
  if [ ! -d "/proc/$pid" ]; then
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    echo "removed stale namespace $ns"
  fi
done
# Per-namespace resolver files (/etc/netns/<ns>/resolv.conf) of those dead runs.
for d in /etc/netns/het-*; do
  [ -d "$d" ] || continue
  pid=${d#/etc/netns/het-}; pid=${pid%%-*}
  [ -d "/proc/$pid" ] || rm -rf "$d"
done

# --- 3. Lints (CI keeps main at fmt + clippy -D warnings) ----------------------------
say "cargo fmt --check and cargo clippy -D warnings"
cargo fmt --all -- --check || die "cargo fmt would change files: run cargo fmt --all"
cargo clippy --workspace --all-targets -- -D warnings || die "clippy found warnings"

# --- 4. Build and test ---------------------------------------------------------------
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
log=$(mktemp -t headend-test-XXXXXX.log)
say "cargo test --workspace (RUST_TEST_THREADS=$RUST_TEST_THREADS), full log in $log"
set +e
timeout --foreground "${HEADEND_TEST_TIMEOUT:-1800}" \
  cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# --- 5. Summary ----------------------------------------------------------------------
elapsed=$(( $(date +%s) - start ))
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
ignored=$(grep -Eo '[0-9]+ ignored' "$log" | awk '{s+=$1} END {print s+0}')
say "SUMMARY: $passed passed, $failed failed, $ignored ignored, ${elapsed}s total (log $log)"
if grep -q '^test .* \.\.\. FAILED$' "$log"; then
  echo "failed tests:"
  grep '^test .* \.\.\. FAILED$' "$log" | sed 's/^test /  /; s/ \.\.\. FAILED$//'
fi
if [ "$rc" = 124 ]; then
  die "test run exceeded ${HEADEND_TEST_TIMEOUT:-1800}s"
fi
if [ "$rc" != 0 ]; then
  die "cargo test exited with $rc"
fi
echo "PASS"
