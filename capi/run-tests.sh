#!/usr/bin/env bash
# The C API's tests, as a C programmer meets the library:
#
# 1. build libvhdx.so and libvhdx.a in release (capi/build.sh);
# 2. compile the header alone as C99 (-pedantic) and as C++11, and check it
#    includes only <stdbool.h>, <stddef.h> and <stdint.h>;
# 3. build every capi/tests/test_*.c with -std=c99 -Wall -Wextra -Werror,
#    once against the shared library (rpath) and once against the static
#    one, run each, and run each again under valgrind --leak-check=full
#    --error-exitcode=1 when valgrind is installed;
# 4. cross-check with QEMU: qemu-img check on C-made images; vhdx2raw (the
#    C tool in capi/tools) against `qemu-img convert -O raw` for a C-made and
#    a QEMU-made dynamic image, and against the Rust library's own read
#    (the CLI example's convert) for a three-image differencing chain;
# 5. install into a temporary prefix (capi/install.sh) and build and run a
#    C program with `pkg-config --cflags --libs vhdx`, shared and static.
#
# Honours CARGO_TARGET_DIR, CC (default cc) and CXX (default c++).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
release="$target/release"
cc="${CC:-cc}"
cxx="${CXX:-c++}"
cflags=(-std=c99 -Wall -Wextra -Werror -O1 -g -I "$root/include")
work="$(mktemp -d "${TMPDIR:-/tmp}/vhdx-capi.XXXXXX")"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

section() {
    printf '\n-- %s\n' "$*"
}
ok() {
    passed=$((passed + 1))
    printf 'ok    %s\n' "$*"
}
bad() {
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$*"
}

section "build the C libraries"
"$root/capi/build.sh"
native_libs="$(cat "$release/libvhdx.native-libs")"

section "the header"
if "$cc" -std=c99 -Wall -Wextra -Werror -pedantic -fsyntax-only -x c "$root/include/vhdx.h"; then
    ok "include/vhdx.h compiles as C99 (-Wall -Wextra -Werror -pedantic)"
else
    bad "include/vhdx.h does not compile as C99"
fi
if "$cxx" -std=c++11 -Wall -Wextra -Werror -fsyntax-only -x c++ "$root/include/vhdx.h"; then
    ok "include/vhdx.h compiles as C++11 (-Wall -Wextra -Werror)"
else
    bad "include/vhdx.h does not compile as C++11"
fi
includes="$(grep '^#include' "$root/include/vhdx.h" | tr '\n' ' ')"
if [ "$includes" = "#include <stdbool.h> #include <stddef.h> #include <stdint.h> " ]; then
    ok "include/vhdx.h includes only stdbool.h, stddef.h and stdint.h"
else
    bad "include/vhdx.h includes: $includes"
fi
# Twice in one unit (the include guard), from C++ (extern "C" linkage).
printf '#include "vhdx.h"\n#include "vhdx.h"\nint main() { return vhdx_version() == 0; }\n' >"$work/twice.cpp"
if "$cxx" -std=c++11 -Wall -Wextra -Werror -I "$root/include" "$work/twice.cpp" -L "$release" -lvhdx \
    -Wl,-rpath,"$release" -o "$work/twice" && "$work/twice"; then
    ok "a C++ program includes the header twice, links and runs"
else
    bad "the C++ program did not build or run"
fi

section "C tests (shared and static, and under valgrind)"
valgrind_cmd=()
if command -v valgrind >/dev/null 2>&1; then
    valgrind_cmd=(valgrind --quiet --leak-check=full --error-exitcode=1)
else
    echo "note: valgrind is not installed; the tests run without it"
fi
mkdir -p "$work/bin"
for src in "$root"/capi/tests/test_*.c; do
    name="$(basename "$src" .c)"
    if ! "$cc" "${cflags[@]}" -pthread "$src" -o "$work/bin/$name.shared" \
        -L "$release" -lvhdx -Wl,-rpath,"$release"; then
        bad "$name: does not build against libvhdx.so"
        continue
    fi
    # shellcheck disable=SC2086 # native_libs is a list of flags
    if ! "$cc" "${cflags[@]}" -pthread "$src" -o "$work/bin/$name.static" "$release/libvhdx.a" $native_libs; then
        bad "$name: does not build against libvhdx.a"
        continue
    fi
    if ldd "$work/bin/$name.static" 2>/dev/null | grep -q libvhdx; then
        bad "$name.static still needs libvhdx.so"
    fi
    for kind in shared static; do
        dir="$work/run-$name-$kind"
        mkdir -p "$dir"
        if "$work/bin/$name.$kind" "$dir" >"$work/out" 2>&1; then
            ok "$name ($kind): $(tail -n 1 "$work/out")"
        else
            bad "$name ($kind)"
            cat "$work/out"
        fi
        if [ ${#valgrind_cmd[@]} -gt 0 ]; then
            dir="$work/valgrind-$name-$kind"
            mkdir -p "$dir"
            if "${valgrind_cmd[@]}" "$work/bin/$name.$kind" "$dir" >"$work/out" 2>&1; then
                ok "$name ($kind) under valgrind: no errors, no leaks"
            else
                bad "$name ($kind) under valgrind"
                cat "$work/out"
            fi
        fi
    done
done

section "QEMU cross-checks and the vhdx2raw tool"
"$cc" "${cflags[@]}" "$root/capi/tools/vhdx2raw.c" -o "$work/vhdx2raw" -L "$release" -lvhdx -Wl,-rpath,"$release"
images="$work/run-test_basic-shared"
chain="$work/run-test_chain-shared"
callbacks="$work/run-test_callbacks-shared"
if command -v qemu-img >/dev/null 2>&1; then
    # (QEMU reads only 512-byte logical sectors, so not c_fixed.vhdx.)
    maintained="$work/run-test_maintain-shared"
    for img in "$images/c_dynamic.vhdx" "$images/c_fixed512.vhdx" "$images/c_defaults.vhdx" \
        "$callbacks/c_callbacks.vhdx" "$maintained/c_maintained.vhdx" "$maintained/c_converted_fixed.vhdx"; do
        if qemu-img check -f vhdx "$img" >"$work/out" 2>&1; then
            ok "qemu-img check passes on the C-made $(basename "$img")"
        else
            bad "qemu-img check on $(basename "$img")"
            cat "$work/out"
        fi
    done
    # A C-made dynamic image, flattened by vhdx2raw and by QEMU.
    if "$work/vhdx2raw" "$images/c_dynamic.vhdx" "$work/c_dynamic.raw" 2>"$work/out" &&
        qemu-img convert -f vhdx -O raw "$images/c_dynamic.vhdx" "$work/c_dynamic.qemu.raw" &&
        cmp "$work/c_dynamic.raw" "$work/c_dynamic.qemu.raw"; then
        ok "vhdx2raw and qemu-img convert agree on the C-made dynamic image"
    else
        bad "vhdx2raw and qemu-img convert differ on c_dynamic.vhdx"
        cat "$work/out"
    fi
    if "$work/vhdx2raw" "$images/c_fixed512.vhdx" "$work/c_fixed.raw" 2>"$work/out" &&
        qemu-img convert -f vhdx -O raw "$images/c_fixed512.vhdx" "$work/c_fixed.qemu.raw" &&
        cmp "$work/c_fixed.raw" "$work/c_fixed.qemu.raw"; then
        ok "vhdx2raw and qemu-img convert agree on the C-made fixed image"
    else
        bad "vhdx2raw and qemu-img convert differ on c_fixed512.vhdx"
        cat "$work/out"
    fi
    # Resized, discarded and compacted through the C API, then converted to raw by it.
    if qemu-img convert -f vhdx -O raw "$maintained/c_maintained.vhdx" "$work/c_maintained.qemu.raw" &&
        cmp "$maintained/c_converted.raw" "$work/c_maintained.qemu.raw"; then
        ok "vhdx_convert's raw output equals qemu-img convert of the resized and compacted image"
    else
        bad "vhdx_convert's raw output and qemu-img convert differ on c_maintained.vhdx"
    fi
    # Sparse output: the zeros are holes.
    apparent="$(stat -c %s "$work/c_dynamic.raw")"
    allocated=$(($(stat -c %b "$work/c_dynamic.raw") * $(stat -c %B "$work/c_dynamic.raw")))
    if [ "$allocated" -lt $((apparent / 4)) ]; then
        ok "vhdx2raw output is sparse ($allocated of $apparent bytes allocated)"
    else
        bad "vhdx2raw output is not sparse ($allocated of $apparent bytes allocated)"
    fi
    # A QEMU-made dynamic image with data written by qemu-io.
    if command -v qemu-io >/dev/null 2>&1; then
        qemu-img create -q -f vhdx -o subformat=dynamic,block_size=1M "$work/q.vhdx" 24M
        qemu-io -f vhdx -c "write -P 0xa5 1000k 300k" -c "write -P 0x3c 17M 4k" -c "write -P 0x01 23M 1M" \
            "$work/q.vhdx" >/dev/null
        if "$work/vhdx2raw" "$work/q.vhdx" "$work/q.raw" 2>"$work/out" &&
            qemu-img convert -f vhdx -O raw "$work/q.vhdx" "$work/q.qemu.raw" &&
            cmp "$work/q.raw" "$work/q.qemu.raw"; then
            ok "vhdx2raw and qemu-img convert agree on a QEMU-made dynamic image"
        else
            bad "vhdx2raw and qemu-img convert differ on the QEMU-made image"
            cat "$work/out"
        fi
    else
        echo "note: qemu-io is not installed; skipping the QEMU-made image"
    fi
else
    echo "note: qemu-img is not installed; skipping the QEMU cross-checks"
fi
# A differencing chain: vhdx2raw against the Rust library's own read.
cargo build --release --quiet --example vhdx
if "$work/vhdx2raw" "$chain/chain_leaf.vhdx" "$work/chain.raw" 2>"$work/out" &&
    "$release/examples/vhdx" convert "$chain/chain_leaf.vhdx" "$work/chain.lib.raw" >/dev/null &&
    cmp "$work/chain.raw" "$work/chain.lib.raw"; then
    ok "vhdx2raw and the Rust library agree on a three-image differencing chain"
else
    bad "vhdx2raw and the Rust library differ on the differencing chain"
    cat "$work/out"
fi

section "install and pkg-config"
prefix="$work/prefix"
if "$root/capi/install.sh" "$prefix" >"$work/out" 2>&1; then
    ok "capi/install.sh $prefix"
else
    bad "capi/install.sh"
    cat "$work/out"
fi
if command -v pkg-config >/dev/null 2>&1; then
    export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
    flags="$(pkg-config --cflags --libs vhdx)"
    echo "pkg-config --cflags --libs vhdx: $flags"
    # shellcheck disable=SC2086 # pkg-config prints a list of flags
    if "$cc" -std=c99 -Wall -Wextra -Werror "$root/capi/tools/vhdx2raw.c" $flags -o "$work/vhdx2raw-pc" &&
        LD_LIBRARY_PATH="$prefix/lib" "$work/vhdx2raw-pc" "$images/c_dynamic.vhdx" "$work/pc.raw" 2>/dev/null &&
        cmp "$work/pc.raw" "$work/c_dynamic.raw"; then
        ok "a C program builds with pkg-config's flags, links the installed libvhdx.so and runs"
    else
        bad "building or running with pkg-config's flags"
    fi
    static_flags="$(pkg-config --static --libs-only-other --libs-only-l vhdx | sed 's/-lvhdx//')"
    # shellcheck disable=SC2086
    if "$cc" -std=c99 -Wall -Wextra -Werror $(pkg-config --cflags vhdx) "$root/capi/tools/vhdx2raw.c" \
        "$prefix/lib/libvhdx.a" $static_flags -o "$work/vhdx2raw-static" &&
        "$work/vhdx2raw-static" "$images/c_dynamic.vhdx" "$work/static.raw" 2>/dev/null &&
        cmp "$work/static.raw" "$work/c_dynamic.raw"; then
        ok "a C program links the installed libvhdx.a with pkg-config --static's libraries and runs"
    else
        bad "static link with pkg-config --static"
    fi
else
    echo "note: pkg-config is not installed; skipping the pkg-config check"
fi

printf '\ncapi: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
