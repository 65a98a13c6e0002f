#!/usr/bin/env bash
# Builds libshmex and the C, C++ and Fortran examples against it (-Wall -Wextra -Werror,
# -std=c11/c++17/f2008, through pkg-config), runs them against the Rust side and against
# each other with every element checked, runs the receive_in_place test (tests/in_place.c:
# tasks and results read in place, or copied out when off), and runs the C error-path test, a
# C agent and an in-place pair under valgrind memcheck (no errors, no leaks). Called by
# .ci/run; runs alone too:
#   ffi/tests/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
prefix=$root/target/shmex-ffi
bin=$root/target/ffi-tests
mkdir -p "$bin"

ffi/scripts/build.sh "$prefix" >/dev/null
cargo build --release -q -p shmex-ffi --example ffi-peer
peer=$root/target/release/examples/ffi-peer
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

echo "--- compile"
c_flags="-std=c11 -Wall -Wextra -Werror -O2 -g"
# shellcheck disable=SC2046,SC2086 # pkg-config's output is a list of flags
{
  gcc $c_flags ffi/examples/agent.c -o "$bin/agent_c" $(pkg-config --cflags --libs shmex)
  gcc $c_flags ffi/examples/exchanger.c -o "$bin/exchanger_c" $(pkg-config --cflags --libs shmex)
  gcc $c_flags ffi/examples/agent.c -o "$bin/agent_c_static" $(pkg-config --cflags --libs shmex-static)
  gcc $c_flags ffi/tests/errors.c -o "$bin/errors" $(pkg-config --cflags --libs shmex)
  gcc $c_flags ffi/tests/in_place.c -o "$bin/in_place" $(pkg-config --cflags --libs shmex)
  g++ -std=c++17 -Wall -Wextra -Werror -O2 ffi/examples/agent.cpp -o "$bin/agent_cpp" \
    $(pkg-config --cflags --libs shmex)
  gfortran -std=f2008 -Wall -Wextra -Werror -O2 -J "$bin" "$prefix/include/shmex.f90" \
    ffi/examples/agent.f90 -o "$bin/agent_f" $(pkg-config --libs shmex)
}
if readelf -d "$bin/agent_c_static" | grep -q 'libshmex'; then
  echo "agent_c_static depends on libshmex.so"; exit 1
fi

site="ffitest$$"
pairs=0
# pair NAME ID EXCHANGER_CMD... -- AGENT_CMD...: both must end with status 0 within 120 s.
# The agent starts once the exchanger's segment has its size: an agent that opens the
# segment between the exchanger's shm_open and its ftruncate fails with "0 bytes, which
# cannot hold a shmex layout" instead of waiting (seen with the exchanger under valgrind).
pair() {
  local name=$1 id=$2; shift 2
  local exchanger=() agent=()
  while [ "$1" != "--" ]; do exchanger+=("$1"); shift; done
  shift
  agent=("$@")
  echo "--- $name"
  timeout 120 "${exchanger[@]}" &
  local exchanger_pid=$!
  local segment=/dev/shm/shmex.$site.$id
  for _ in $(seq 600); do [ -s "$segment" ] && break; sleep 0.1; done
  local agent_status=0 exchanger_status=0
  timeout 120 "${agent[@]}" || agent_status=$?
  wait "$exchanger_pid" || exchanger_status=$?
  if [ "$agent_status" != 0 ] || [ "$exchanger_status" != 0 ]; then
    echo "$name: agent exited $agent_status, exchanger $exchanger_status"; exit 1
  fi
  pairs=$((pairs + 1))
}

# 3 rounds of 2^20 + 16 f32 elements; the 6M-element model (24 MiB) is larger than the
# 16 MiB ring and travels in fragments. The C and Fortran agents answer by loan (which must
# fit in one ring record), the Rust agent by copy, the C++ agent by loan or, for a result too
# large for one record (the fragmented pair), by copy; the C exchanger sends odd rounds by
# loan and even rounds (and models too large for a loan) by copy. The Fortran and C++ agents
# set receive_in_place: the 4 MiB models are read in place (the Fortran agent checks it), the
# fragmented one is not.
pair "Rust exchanger <-> C agent" c "$peer" exchanger "$site" c 3 1048576 -- "$bin/agent_c" "$site" c
pair "C exchanger <-> Rust agent" rust "$bin/exchanger_c" "$site" rust 3 1048576 -- "$peer" agent "$site" rust
pair "Rust exchanger <-> Fortran agent" f "$peer" exchanger "$site" f 3 1048576 -- "$bin/agent_f" "$site" f in-place
pair "Rust exchanger <-> C++ agent" cpp "$peer" exchanger "$site" cpp 3 1048576 -- "$bin/agent_cpp" "$site" cpp
pair "C exchanger <-> C agent (static)" cs "$bin/exchanger_c" "$site" cs 2 1048576 -- "$bin/agent_c_static" "$site" cs
pair "C exchanger <-> Fortran agent" cf "$bin/exchanger_c" "$site" cf 2 1048576 -- "$bin/agent_f" "$site" cf in-place
pair "C exchanger <-> C++ agent, fragmented" cc "$bin/exchanger_c" "$site" cc 2 6000000 -- "$bin/agent_cpp" "$site" cc

# Loaned tasks answered by loan, receive_in_place on both sides (read in place, a held task
# keeps the next one out until freed) and off (copied out).
pair "C exchanger <-> C agent, received in place" ip "$bin/in_place" exchanger "$site" ip on -- "$bin/in_place" agent "$site" ip on
pair "C exchanger <-> C agent, receive_in_place off" io "$bin/in_place" exchanger "$site" io off -- "$bin/in_place" agent "$site" io off

command -v valgrind >/dev/null || { echo "valgrind is required"; exit 1; }
memcheck=(valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,possible)
echo "--- valgrind: C error paths"
timeout 300 "${memcheck[@]}" "$bin/errors" "$site"
echo "--- valgrind: Rust exchanger <-> C agent"
pair "valgrind C agent" vg "$peer" exchanger "$site" vg 2 65536 -- "${memcheck[@]}" "$bin/agent_c" "$site" vg
echo "--- valgrind: C exchanger <-> Rust agent"
pair "valgrind C exchanger" vx "${memcheck[@]}" "$bin/exchanger_c" "$site" vx 2 65536 -- "$peer" agent "$site" vx
echo "--- valgrind: C exchanger <-> C agent, both received in place"
pair "valgrind in place" vi "${memcheck[@]}" "$bin/in_place" exchanger "$site" vi on -- "${memcheck[@]}" "$bin/in_place" agent "$site" vi on

if ls /dev/shm | grep -q "^shmex\.$site\."; then
  echo "segments left behind:"; ls /dev/shm | grep "^shmex\.$site\."; exit 1
fi
echo "ffi: $pairs runs passed, error paths and memcheck clean, no segments left"
