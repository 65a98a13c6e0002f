#!/usr/bin/env bash
# Runs the in-process (heap-backed) tests of the ring, signal, stream and layout modules under
# Miri, where a nightly toolchain with the Miri component is installed; says so and succeeds
# where it is not (Miri cannot be downloaded on machines without internet access).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  echo "miri: not installed on this machine (cargo +nightly miri unavailable); skipped"
  exit 0
fi
# Tests that call the OS (shm, futex, locks, threads with timeouts) are outside Miri's reach;
# the ring, stream and layout modules run on heap memory only.
MIRIFLAGS="-Zmiri-disable-isolation" cargo +nightly miri test -p shmex --lib -- ring:: stream:: layout::
