#!/usr/bin/env bash
# Run every fuzz target for a while (default 60 s each) and print executions and findings.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets it
# use the sanitizer flags. Corpora stay in fuzz/corpus/<target>, findings in
# fuzz/artifacts/<target> (turn each into a regression test, then delete it).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
export RUSTC_BOOTSTRAP=1
targets=(config timestamp classify ingest)
cargo fuzz build -O "${targets[@]/#/}" >/dev/null 2>&1 || cargo fuzz build -O
printf '%-10s %14s %10s %8s\n' target executions exec/s findings
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  [ -d "seeds/$t" ] && cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  log=$(mktemp)
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || true
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  found=$(find "artifacts/$t" -type f | wc -l)
  printf '%-10s %14s %10s %8s\n' "$t" "$execs" "$rate" "$found"
  if [ "$found" != 0 ]; then tail -40 "$log"; fi
  rm -f "$log"
done
