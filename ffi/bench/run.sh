#!/usr/bin/env bash
# The issue-11 targets, measured (a benchmark: not run by CI, no pass/fail):
#   - a 1 GiB model round trip (Rust exchanger, task by copy) answered by a C agent on the
#     loan path vs by the Rust agent on the loan path, same run;
#   - an 8-byte task round trip driven from C (C exchanger <-> C agent) vs from Rust (Rust
#     exchanger <-> Rust agent), same run.
# Both agents do the same work (every f32 element plus one, written into the loan). Prints
# RESULT lines (median and p99 round trip) and RATIO lines (C median / Rust median).
#   ffi/bench/run.sh            BIG_ROUNDS=5 SMALL_ROUNDS=20000 by default (env overrides)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
prefix=$root/target/shmex-ffi
bin=$root/target/ffi-bench
mkdir -p "$bin"
big_rounds=${BIG_ROUNDS:-5}
small_rounds=${SMALL_ROUNDS:-20000}

ffi/scripts/build.sh "$prefix" >/dev/null
cargo build --release -q -p shmex-ffi --example ffi-peer
peer=$root/target/release/examples/ffi-peer
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# -O3: the optimisation level of cargo's release profile.
# shellcheck disable=SC2046 # pkg-config's output is a list of flags
gcc -std=c11 -Wall -Wextra -Werror -O3 ffi/bench/bench.c -o "$bin/bench" \
  $(pkg-config --cflags --libs shmex)

site="bench$$"
trap 'rm -f /dev/shm/shmex.$site.*' EXIT
# run ID EXCHANGER_CMD... -- AGENT_CMD...: prints the exchanger's RESULT line.
run() {
  local id=$1; shift
  local exchanger=() agent=()
  while [ "$1" != "--" ]; do exchanger+=("$1"); shift; done
  shift
  agent=("$@")
  local out=$bin/$id.out
  timeout 600 "${exchanger[@]}" >"$out" &
  local exchanger_pid=$!
  for _ in $(seq 600); do [ -s "/dev/shm/shmex.$site.$id" ] && break; sleep 0.1; done
  timeout 600 "${agent[@]}"
  wait "$exchanger_pid"
  grep '^RESULT' "$out"
}
median_of() { sed -n "s/^RESULT $1 median_us=\([0-9.]*\).*/\1/p" "$bin/results"; }

gib=$((1 << 30))
ring=$((gib + (64 << 20)))
small_ring=$((16 << 20))
{
  run big_rust "$peer" bench-exchanger "$site" big_rust model_1GiB_rust_agent_loan 2 "$big_rounds" "$gib" "$ring" \
    -- "$peer" bench-agent "$site" big_rust
  run big_c "$peer" bench-exchanger "$site" big_c model_1GiB_c_agent_loan 2 "$big_rounds" "$gib" "$ring" \
    -- "$bin/bench" agent "$site" big_c
  run small_rust "$peer" bench-exchanger "$site" small_rust task_8B_rust 1000 "$small_rounds" 8 "$small_ring" \
    -- "$peer" bench-agent "$site" small_rust
  run small_c "$bin/bench" exchanger "$site" small_c task_8B_c 1000 "$small_rounds" 8 "$small_ring" \
    -- "$bin/bench" agent "$site" small_c
} | tee "$bin/results"
ratio() {
  python3 -c "import sys; print(f'RATIO $1 {float(sys.argv[1]) / float(sys.argv[2]):.3f} (target <= $2)')" \
    "$(median_of "$3")" "$(median_of "$4")"
}
ratio model_1GiB_c_agent_loan/rust_agent_loan 1.1 model_1GiB_c_agent_loan model_1GiB_rust_agent_loan
ratio task_8B_c/rust 1.2 task_8B_c task_8B_rust
