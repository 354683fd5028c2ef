#!/usr/bin/env bash
# The demo's verdict over a series of runs (default 20), each with its own link-emulator seed:
# builds once, runs scripts/demo.py N times, keeps each run's output under target/demo/series/,
# and prints one line per run (verdict, pauses, retransmissions in and out of the migration
# window) and the tally. Not part of the test suite (about a minute a run). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
bash scripts/setup.sh
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:/root/.cargo/bin:$PATH"
cargo build --release --locked --bin tsmp-proxy --bin tsmp-names --bin tsmp-agent --bin tsmp-linkem 2>&1 | tail -1
out=target/demo/series
mkdir -p "$out"
pass=0
for i in $(seq 1 "$runs"); do
  log="$out/run-$i.txt"
  TSMP_DEMO_SEED="$i" python3 scripts/demo.py > "$log" 2>&1 || true
  verdict=$(grep -o 'VERDICT: [A-Z]*' "$log" | tail -1 || true)
  pauses=$(grep -o 'pauses (worker.s clock): video [0-9.]* ms, chat [0-9.]* ms' "$log" | sed 's/pauses (worker.s clock): //' || true)
  again=$(grep -o 'segments Alice sent again: [0-9]* before the freeze[^,]*, [0-9]* from the freeze' "$log" \
    | sed -E 's/segments Alice sent again: ([0-9]*) before.*, ([0-9]*) from the freeze/\1 before, \2 in the window/' || true)
  later=$(grep -o 'and [0-9]* later on the PC' "$log" | grep -o '[0-9]*' || echo 0)
  echo "run $i (seed $i): ${verdict:-VERDICT: none} | ${pauses:-no pauses} | retransmissions: ${again:-?}, $later after it"
  [ "$verdict" = "VERDICT: PASS" ] && pass=$((pass + 1))
done
echo "series: $pass of $runs runs passed (outputs in $out)"
[ "$pass" -eq "$runs" ]
