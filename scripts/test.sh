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
cargo test --workspace --no-fail-fast --locked -- --test-threads=1
