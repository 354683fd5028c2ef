#!/usr/bin/env bash
# The whole test suite: unit tests, config rejection tests, the EAL-level memif test and the
# kernel-TCP tests in network namespaces. Needs root; installs what it needs (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source_path="$(pwd)"
bash scripts/setup.sh
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:/root/.cargo/bin:$PATH"
cd "$source_path"
cargo build --workspace --all-targets --locked
# Hugepage files that exited DPDK processes of earlier runs left behind still hold their pages;
# no tsmp process runs now, so they go (a test's EAL that cannot get memory fails to start).
if ! pgrep -f 'tsmp-(proxy|pktgen)' >/dev/null; then rm -f /dev/hugepages/tsmp*; fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast --locked -- --test-threads=1 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
