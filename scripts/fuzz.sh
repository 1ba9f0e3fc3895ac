#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ (libFuzzer through libfuzzer-sys) with the stable toolchain,
# instrumented for coverage as cargo-fuzz does (no sanitizer: that needs nightly; `cargo fuzz
# run TARGET` with a nightly toolchain adds AddressSanitizer), and runs each for SECONDS on its
# seeds (fuzz/seeds/TARGET, from real captures: fuzz/make-seeds.sh). A crash fails the run; its
# input and log stay in the work directory it names. Prints per target: executions, coverage.
#   scripts/fuzz.sh [SECONDS] [TARGET...]       (default 10 s each, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
[ $# -gt 0 ] && shift
case $secs in '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a number, not $secs" >&2; exit 2 ;; esac
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}/fuzz
export SQLX_OFFLINE=true SQLX_OFFLINE_DIR=$root/.sqlx
export CARGO_INCREMENTAL=0
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit target, as cargo-fuzz gives: RUSTFLAGS then reach the targets and the crates they
# link, not the build scripts and proc macros that run on the host.
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --locked --release --quiet --manifest-path fuzz/Cargo.toml --bins --target "$triple"
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
fi
work=$(mktemp -d /tmp/plinth-fuzz.XXXXXX)
printf '%-14s %12s %8s %8s %7s\n' target executions exec/s cov ft
failed=()
for t in "${targets[@]}"; do
  bin=$CARGO_TARGET_DIR/$triple/release/$t
  [ -x "$bin" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
  mkdir -p "$work/$t/corpus"
  # New inputs go to the work directory; the committed seeds are only read.
  if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/$t/" "$work/$t/corpus" "$root/fuzz/seeds/$t" >"$work/$t.log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t.log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$work/$t.log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    printf '%-14s %12s %8s %8s %7s\n' "$t" "$execs" "$rate" "${cov:--}" "${ft:--}"
  else
    printf '%-14s CRASHED (log: %s)\n' "$t" "$work/$t.log"
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "$work/$t.log" | head -5 || true
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in ${failed[*]}; inputs and logs in $work" >&2
  exit 1
fi
rm -rf "$work"
