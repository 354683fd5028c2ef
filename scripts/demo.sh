#!/usr/bin/env bash
# The main job: the live-migration demo (scripts/demo.py) on the appliance's embedded default
# configuration. Bob's phone watches Alice's video and chats with her; his agent moves both
# connections to his PC; Alice's server never notices. Needs root; installs what it needs
# (scripts/setup.sh), builds the binaries, and removes everything it created on exit, Ctrl-C or
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:/root/.cargo/bin:$PATH"
echo "== building (release)"
cargo build --release --locked --bin tsmp-proxy --bin tsmp-names --bin tsmp-agent --bin tsmp-linkem 2>&1 | tail -1
exec python3 scripts/demo.py
