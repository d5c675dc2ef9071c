#!/usr/bin/env bash
# Builds libvhdx's C libraries in release: target/release/libvhdx.so (or
# .dylib) and libvhdx.a, and records in target/release/libvhdx.native-libs
# the system libraries a static link needs (rustc's native-static-libs).
#
# The crate's [lib] stays `rlib` only: a cdylib or staticlib crate type there
# would make every build of the crate, including `--no-default-features` (the
# no_std core) and its use as a dependency, link a final artifact that needs a
# panic handler and an allocator, which no_std cannot give. So the C
# libraries are asked for here, explicitly, with `cargo rustc --crate-type`.
#
# Honours CARGO_TARGET_DIR.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

if ! cargo rustc --release --lib --features capi --crate-type cdylib,staticlib -- --print native-static-libs 2>"$log"; then
    cat "$log" >&2
    exit 1
fi
grep -v 'native-static-libs' "$log" | grep -E '^(warning|error)' >&2 || true
libs="$(sed -n 's/.*native-static-libs: //p' "$log" | tail -n 1)"
if [ -z "$libs" ]; then
    # Cargo replays rustc's notes from its cache; if it ever does not, these
    # are what Rust's std needs on Linux.
    libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
fi
printf '%s\n' "$libs" >"$target/release/libvhdx.native-libs"
echo "built $target/release/libvhdx.a and the shared library; static links also need: $libs"
