#!/usr/bin/env bash
# Builds libshmex (release) and installs it with its headers and pkg-config files:
#   ffi/scripts/build.sh [PREFIX]        (default PREFIX: target/shmex-ffi in the workspace)
# gives
#   PREFIX/lib/libshmex.so, PREFIX/lib/libshmex.a     (cargo's libshmex_ffi.*, renamed:
#       the crate's lib is `shmex_ffi` because the root package's rlib is `libshmex`)
#   PREFIX/include/shmex.h, shmex.hpp, shmex.f90
#   PREFIX/lib/pkgconfig/shmex.pc          -lshmex (shared)
#   PREFIX/lib/pkgconfig/shmex-static.pc   PREFIX/lib/libshmex.a and its system libraries
# Then: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig cc app.c $(pkg-config --cflags --libs shmex)
set -euo pipefail
ffi=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$ffi/.." && pwd)
prefix=${1:-$root/target/shmex-ffi}
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)

cargo build --release -p shmex-ffi --lib --manifest-path "$root/Cargo.toml"
target_dir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
# Copy to a temporary name and rename, so a program running against the old library keeps
# its mapping.
for kind in so a; do
  cp "$target_dir/release/libshmex_ffi.$kind" "$prefix/lib/.libshmex.$kind.tmp"
  mv -f "$prefix/lib/.libshmex.$kind.tmp" "$prefix/lib/libshmex.$kind"
done
cp "$ffi/include/shmex.h" "$ffi/include/shmex.hpp" "$ffi/include/shmex.f90" "$prefix/include/"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ffi/Cargo.toml" | head -1)
# What rustc reports for the staticlib (`--print native-static-libs`) on Linux/glibc.
libs_private="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
fill() {
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" -e "s|@LIBS_PRIVATE@|$libs_private|g" \
    "$ffi/shmex.pc.in"
}
fill >"$prefix/lib/pkgconfig/shmex.pc"
fill | sed -e 's|^Name: shmex|Name: shmex-static|' \
  -e "s|^Libs: .*|Libs: \${libdir}/libshmex.a $libs_private|" -e '/^Libs.private/d' \
  >"$prefix/lib/pkgconfig/shmex-static.pc"
echo "installed libshmex $version into $prefix"
