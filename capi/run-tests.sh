#!/usr/bin/env bash
# The C API's tests, as a C programmer meets the library:
#
# 1. build libvhdx.so and libvhdx.a in release (capi/build.sh);
# 2. compile the header alone as C99 (-pedantic) and as C++11, and check it
#    includes only <stdbool.h>, <stddef.h> and <stdint.h>;
# 3. build every capi/tests/test_*.c with -std=c99 -Wall -Wextra -Werror,
#    once against the shared library (rpath) and once against the static
#    one, run each, and run each again under valgrind --leak-check=full
#    --error-exitcode=1 (capi/valgrind.supp says what it lets pass, and why);
# 4. flatten images with vhdx2raw (the C tool in capi/tools) and compare with
#    oracles independent of the library: the raw reference files the C tests
#    write beside their images (NAME.expected.raw: the bytes they wrote), a
#    reference this script builds for what qemu-io writes, and
#    `qemu-img convert -O raw`; qemu-img check on the C-made images;
# 5. install into a temporary prefix (capi/install.sh) and build and run a
#    C program with `pkg-config --cflags --libs vhdx`, shared and static.
#
# valgrind, qemu-img, qemu-io and pkg-config are oracles: under CI=true a
# missing one is a failure; elsewhere its checks are skipped with a note.
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
# `have TOOL WHAT`: whether TOOL is installed. When it is not, WHAT (the
# checks it is the oracle of) fails under CI=true and is skipped otherwise.
have() {
    if command -v "$1" >/dev/null 2>&1; then
        return 0
    fi
    if [ "${CI:-}" = "true" ]; then
        bad "$1 is not installed: $2 cannot run (CI=true: a missing oracle is a failure)"
    else
        echo "note: $1 is not installed; skipping $2"
    fi
    return 1
}
# `same_bytes A B WHAT`: ok when files A and B are equal, bad (with where
# they first differ) when not.
same_bytes() {
    if cmp "$1" "$2" >"$work/cmp" 2>&1; then
        ok "$3"
    else
        bad "$3: $(cat "$work/cmp")"
    fi
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
if have valgrind "the C tests under valgrind"; then
    valgrind_cmd=(valgrind --quiet --leak-check=full --error-exitcode=1 --suppressions="$root/capi/valgrind.supp")
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

section "vhdx2raw against raw references and QEMU"
"$cc" "${cflags[@]}" "$root/capi/tools/vhdx2raw.c" -o "$work/vhdx2raw" -L "$release" -lvhdx -Wl,-rpath,"$release"
images="$work/run-test_basic-shared"
chain="$work/run-test_chain-shared"
callbacks="$work/run-test_callbacks-shared"
maintained="$work/run-test_maintain-shared"
# `flatten IMAGE OUT`: vhdx2raw IMAGE OUT, its errors shown when it fails.
flatten() {
    if ! "$work/vhdx2raw" "$1" "$2" 2>"$work/out"; then
        cat "$work/out"
        rm -f "$2"
        return 1
    fi
}
# What the C tests wrote, flattened by vhdx2raw: equal to what they wrote.
for name in c_dynamic c_fixed512; do
    if flatten "$images/$name.vhdx" "$work/$name.raw"; then
        same_bytes "$work/$name.raw" "$images/$name.expected.raw" \
            "vhdx2raw of the C-made $name.vhdx equals the bytes the C test wrote"
    else
        bad "vhdx2raw $name.vhdx"
    fi
done
# A three-image differencing chain (QEMU has no VHDX differencing support).
if flatten "$chain/chain_leaf.vhdx" "$work/chain.raw"; then
    same_bytes "$work/chain.raw" "$chain/chain_leaf.expected.raw" \
        "vhdx2raw of a three-image differencing chain equals the C test's model of it"
else
    bad "vhdx2raw chain_leaf.vhdx"
fi
# VHDs made through the C ABI: vhdx2raw (vhdx_open tells a VHD by its
# content) and, below, QEMU's vpc driver read what the C test wrote.
vhds="$work/run-test_vhd-shared"
for name in c_vhd_dynamic c_vhd_leaf; do
    if flatten "$vhds/$name.vhd" "$work/$name.raw"; then
        same_bytes "$work/$name.raw" "$vhds/$name.expected.raw" \
            "vhdx2raw of the C-made $name.vhd equals the bytes the C test wrote"
    else
        bad "vhdx2raw $name.vhd"
    fi
done
# Sparse output: the zeros are holes.
apparent="$(stat -c %s "$work/c_dynamic.raw" 2>/dev/null || echo 0)"
allocated=$(($(stat -c %b "$work/c_dynamic.raw" 2>/dev/null || echo 0) * $(stat -c %B "$work/c_dynamic.raw" 2>/dev/null || echo 0)))
if [ "$apparent" -gt 0 ] && [ "$allocated" -lt $((apparent / 4)) ]; then
    ok "vhdx2raw output is sparse ($allocated of $apparent bytes allocated)"
else
    bad "vhdx2raw output is not sparse ($allocated of $apparent bytes allocated)"
fi
if have qemu-img "the QEMU cross-checks (qemu-img check and convert)"; then
    # (QEMU reads only 512-byte logical sectors, so not c_fixed.vhdx.)
    for img in "$images/c_dynamic.vhdx" "$images/c_fixed512.vhdx" "$images/c_defaults.vhdx" \
        "$callbacks/c_callbacks.vhdx" "$callbacks/c_import.vhdx" "$maintained/c_maintained.vhdx" \
        "$maintained/c_converted_fixed.vhdx"; do
        if qemu-img check -f vhdx "$img" >"$work/out" 2>&1; then
            ok "qemu-img check passes on the C-made $(basename "$img")"
        else
            bad "qemu-img check on $(basename "$img")"
            cat "$work/out"
        fi
    done
    # QEMU's vpc driver reads the C-made dynamic VHD (it has no VHD chains).
    if qemu-img convert -f vpc -O raw "$vhds/c_vhd_dynamic.vhd" "$work/c_vhd_dynamic.qemu.raw"; then
        same_bytes "$work/c_vhd_dynamic.qemu.raw" "$vhds/c_vhd_dynamic.expected.raw" \
            "qemu-img convert -f vpc of the C-made c_vhd_dynamic.vhd equals the bytes the C test wrote"
    else
        bad "qemu-img convert c_vhd_dynamic.vhd"
    fi
    # QEMU reads what the C tests wrote.
    for name in c_dynamic c_fixed512; do
        if qemu-img convert -f vhdx -O raw "$images/$name.vhdx" "$work/$name.qemu.raw"; then
            same_bytes "$work/$name.qemu.raw" "$images/$name.expected.raw" \
                "qemu-img convert of the C-made $name.vhdx equals the bytes the C test wrote"
        else
            bad "qemu-img convert $name.vhdx"
        fi
    done
    # Written the way a VMM does its own I/O (vhdx_resolve_write, pwrite,
    # vhdx_commit_write) and by four threads at once: QEMU reads the bytes.
    resolved="$work/run-test_resolve-shared"
    if qemu-img convert -f vhdx -O raw "$resolved/c_resolved.vhdx" "$work/c_resolved.qemu.raw"; then
        same_bytes "$work/c_resolved.qemu.raw" "$resolved/c_resolved.expected.raw" \
            "qemu-img convert of the image written through resolved extents and by four threads equals the bytes written"
    else
        bad "qemu-img convert c_resolved.vhdx"
    fi
    # A raw buffer imported by vhdx_import_raw: QEMU reads the buffer's bytes.
    if qemu-img convert -f vhdx -O raw "$callbacks/c_import.vhdx" "$work/c_import.qemu.raw"; then
        same_bytes "$work/c_import.qemu.raw" "$callbacks/c_import.expected.raw" \
            "qemu-img convert of the image vhdx_import_raw made equals the raw buffer it read"
    else
        bad "qemu-img convert c_import.vhdx"
    fi
    # Resized, discarded and compacted through the C API, then converted to raw by it.
    if qemu-img convert -f vhdx -O raw "$maintained/c_maintained.vhdx" "$work/c_maintained.qemu.raw"; then
        same_bytes "$maintained/c_converted.raw" "$work/c_maintained.qemu.raw" \
            "vhdx_convert's raw output equals qemu-img convert of the resized and compacted image"
    else
        bad "qemu-img convert c_maintained.vhdx"
    fi
    # A QEMU-made dynamic image with data written by qemu-io; the reference
    # is built here from the same three writes.
    if have qemu-io "the QEMU-made image written by qemu-io"; then
        qemu-img create -q -f vhdx -o subformat=dynamic,block_size=1M "$work/q.vhdx" 24M
        qemu-io -f vhdx -c "write -P 0xa5 1000k 300k" -c "write -P 0x3c 17M 4k" -c "write -P 0x01 23M 1M" \
            "$work/q.vhdx" >/dev/null
        truncate -s 24M "$work/q.expected.raw"
        # `fill BYTE OFFSET_KIB LENGTH_KIB`: the pattern qemu-io's write -P leaves.
        fill() {
            head -c $(($3 * 1024)) /dev/zero | tr '\0' "\\$(printf '%03o' "$1")" |
                dd of="$work/q.expected.raw" bs=1024 seek="$2" conv=notrunc status=none
        }
        fill 0xa5 1000 300
        fill 0x3c $((17 * 1024)) 4
        fill 0x01 $((23 * 1024)) 1024
        if flatten "$work/q.vhdx" "$work/q.raw"; then
            same_bytes "$work/q.raw" "$work/q.expected.raw" \
                "vhdx2raw of a QEMU-made dynamic image equals what qemu-io wrote"
        else
            bad "vhdx2raw q.vhdx"
        fi
        if qemu-img convert -f vhdx -O raw "$work/q.vhdx" "$work/q.qemu.raw"; then
            same_bytes "$work/q.qemu.raw" "$work/q.expected.raw" \
                "the reference of what qemu-io wrote equals qemu-img convert's read (the reference is right)"
        else
            bad "qemu-img convert q.vhdx"
        fi
    fi
fi

section "install and pkg-config"
prefix="$work/prefix"
if "$root/capi/install.sh" "$prefix" >"$work/out" 2>&1; then
    ok "capi/install.sh $prefix"
else
    bad "capi/install.sh"
    cat "$work/out"
fi
if have pkg-config "the pkg-config build checks"; then
    export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
    flags="$(pkg-config --cflags --libs vhdx)"
    echo "pkg-config --cflags --libs vhdx: $flags"
    # shellcheck disable=SC2086 # pkg-config prints a list of flags
    if "$cc" -std=c99 -Wall -Wextra -Werror "$root/capi/tools/vhdx2raw.c" $flags -o "$work/vhdx2raw-pc" &&
        LD_LIBRARY_PATH="$prefix/lib" "$work/vhdx2raw-pc" "$images/c_dynamic.vhdx" "$work/pc.raw" 2>/dev/null &&
        cmp "$work/pc.raw" "$images/c_dynamic.expected.raw"; then
        ok "a C program builds with pkg-config's flags, links the installed libvhdx.so and runs"
    else
        bad "building or running with pkg-config's flags"
    fi
    static_flags="$(pkg-config --static --libs-only-other --libs-only-l vhdx | sed 's/-lvhdx//')"
    # shellcheck disable=SC2086
    if "$cc" -std=c99 -Wall -Wextra -Werror $(pkg-config --cflags vhdx) "$root/capi/tools/vhdx2raw.c" \
        "$prefix/lib/libvhdx.a" $static_flags -o "$work/vhdx2raw-static" &&
        "$work/vhdx2raw-static" "$images/c_dynamic.vhdx" "$work/static.raw" 2>/dev/null &&
        cmp "$work/static.raw" "$images/c_dynamic.expected.raw"; then
        ok "a C program links the installed libvhdx.a with pkg-config --static's libraries and runs"
    else
        bad "static link with pkg-config --static"
    fi
fi

printf '\ncapi: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
