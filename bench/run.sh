#!/bin/sh
# One command for the WAN benchmark (issue 4): installs missing baseline tools (root, Debian),
# builds strait and the harness in release, runs the matrix, writes BENCHMARKS.md and the chart.
#   bench/run.sh                      full matrix (≤ 20 min), writes BENCHMARKS.md
#   bench/run.sh --quick --check bench/thresholds.toml     CI regression gate (≤ 3 min)
#   bench/run.sh --fec                FEC benchmark (issue 5), writes BENCHMARKS.md
set -eu
cd "$(dirname "$0")/.."
sh crates/wanem/bench-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p strait -p strait-wanem --bin strait --bin strait-bench
write=""
case " $* " in *" --quick "*) ;; *) write="--write BENCHMARKS.md" ;; esac
# shellcheck disable=SC2086
exec "$CARGO_TARGET_DIR/release/strait-bench" --strait "$CARGO_TARGET_DIR/release/strait" $write "$@"
