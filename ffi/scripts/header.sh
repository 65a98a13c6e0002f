#!/usr/bin/env bash
# Regenerates include/shmex.h with cbindgen (the Debian package `cbindgen`, 0.24.3, or the
# same version from `cargo install cbindgen --version 0.24.3`): another cbindgen version may
# lay the header out differently, and CI compares the committed header with a fresh one.
#   ffi/scripts/header.sh            write ffi/include/shmex.h
#   ffi/scripts/header.sh --check    fail if the committed header is stale
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cbindgen >/dev/null || { echo "cbindgen is required (apt-get install cbindgen)"; exit 1; }
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
cbindgen --quiet --config cbindgen.toml --crate shmex-ffi --output "$fresh"
if [ "${1:-}" = "--check" ]; then
  if ! diff -u include/shmex.h "$fresh"; then
    echo "ffi/include/shmex.h is stale: run ffi/scripts/header.sh and commit it"
    exit 1
  fi
  echo "ffi/include/shmex.h is up to date ($(cbindgen --version))"
else
  cp "$fresh" include/shmex.h
fi
