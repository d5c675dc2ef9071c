#!/usr/bin/env bash
# Installs libvhdx for C and C++ programs under PREFIX:
#
#   capi/install.sh /usr/local        (or any directory, e.g. $HOME/.local)
#
#   PREFIX/include/vhdx.h
#   PREFIX/lib/libvhdx.so (libvhdx.dylib on macOS) and PREFIX/lib/libvhdx.a
#   PREFIX/lib/pkgconfig/vhdx.pc
#
# Then: cc prog.c $(pkg-config --cflags --libs vhdx)            (shared)
#       cc prog.c $(pkg-config --cflags vhdx) PREFIX/lib/libvhdx.a \
#          $(pkg-config --static --libs-only-other --libs-only-l vhdx | sed 's/-lvhdx//')   (static)
# with PKG_CONFIG_PATH=PREFIX/lib/pkgconfig when PREFIX is not a system one.
#
# Builds first (capi/build.sh, offline once the crates are fetched); honours
# CARGO_TARGET_DIR and DESTDIR (staged installs: files go to DESTDIR/PREFIX,
# the .pc file still says PREFIX).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 PREFIX" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$1" in
    /*) prefix="$1" ;;
    *) prefix="$(pwd)/$1" ;;
esac
dest="${DESTDIR:-}$prefix"
target="${CARGO_TARGET_DIR:-$root/target}"
release="$target/release"

"$root/capi/build.sh"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
libs_private="$(cat "$release/libvhdx.native-libs")"
shared=""
for name in libvhdx.so libvhdx.dylib; do
    if [ -f "$release/$name" ]; then
        shared="$name"
    fi
done
if [ -z "$shared" ]; then
    echo "error: no shared library in $release" >&2
    exit 1
fi

install -d "$dest/include" "$dest/lib/pkgconfig"
install -m 644 "$root/include/vhdx.h" "$dest/include/vhdx.h"
install -m 755 "$release/$shared" "$dest/lib/$shared"
install -m 644 "$release/libvhdx.a" "$dest/lib/libvhdx.a"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" -e "s|@LIBS_PRIVATE@|$libs_private|" \
    "$root/capi/vhdx.pc.in" >"$dest/lib/pkgconfig/vhdx.pc"
chmod 644 "$dest/lib/pkgconfig/vhdx.pc"
echo "installed vhdx $version under $dest: include/vhdx.h, lib/$shared, lib/libvhdx.a, lib/pkgconfig/vhdx.pc"
