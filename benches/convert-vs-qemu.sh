#!/usr/bin/env bash
# `vhdx convert` against `qemu-img convert`, like for like, on a 2 GiB fully
# allocated dynamic VHDX of random data converted to raw (see BENCHMARKS.md,
# "Convert against qemu-img"):
#
#   unsynced: `qemu-img convert -O raw SRC OUT`        vs `vhdx convert --no-sync SRC OUT`
#   durable:  `qemu-img convert -O raw SRC OUT && sync` vs `vhdx convert SRC OUT`
#
#   benches/convert-vs-qemu.sh [DIR] [ROUNDS]   (default: a temporary directory, 3)
#
# Builds target/release/vhdx (cargo build --release --features cli), makes
# the source once (random data converted by qemu-img, so it is neither zero
# nor compressible; it stays in the page cache), then runs ROUNDS rounds,
# each alternating the tools: qemu unsynced, vhdx unsynced, qemu durable,
# vhdx durable, after an untimed run of each. Before each run the outputs are removed and `sync` run;
# nothing else is dropped. Every output is compared (cmp) with qemu-img's.
# Prints each run's wall-clock seconds, the medians and qemu / vhdx.
# Needs qemu-img, awk and 7 GiB free in DIR.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$(mktemp -d)}"
rounds="${2:-3}"
(cd "$repo" && cargo build --release --features cli --quiet)
vhdx="$repo/target/release/vhdx"
mkdir -p "$dir"
cd "$dir"

if [ ! -s src.vhdx ]; then
    head -c 2G /dev/urandom >rand.raw
    qemu-img convert -f raw -O vhdx -o subformat=dynamic rand.raw src.vhdx
    rm -f rand.raw
fi
qemu-img convert -f vhdx -O raw src.vhdx ref.raw # the reference output
# An untimed run of each first: the first run after the source and the
# reference were written meets other page-cache conditions than the rest.
"$vhdx" convert --no-sync --force src.vhdx out-vhdx.raw >/dev/null
qemu-img convert -f vhdx -O raw src.vhdx out-qemu.raw

# Seconds (wall clock) of "$@".
seconds() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}
fresh() {
    rm -f out-qemu.raw out-vhdx.raw
    sync
}
same() {
    cmp "$1" ref.raw || { echo "$1 differs from qemu-img's output" >&2; exit 1; }
}
qemu_sync() { qemu-img convert -f vhdx -O raw src.vhdx out-qemu.raw && sync; }

declare -a qn vn qd vd
for r in $(seq "$rounds"); do
    fresh; qn+=("$(seconds qemu-img convert -f vhdx -O raw src.vhdx out-qemu.raw)"); same out-qemu.raw
    fresh; vn+=("$(seconds "$vhdx" convert --no-sync src.vhdx out-vhdx.raw)"); same out-vhdx.raw
    fresh; qd+=("$(seconds qemu_sync)"); same out-qemu.raw
    fresh; vd+=("$(seconds "$vhdx" convert src.vhdx out-vhdx.raw)"); same out-vhdx.raw
    echo "round $r: qemu ${qn[-1]}  vhdx --no-sync ${vn[-1]}  qemu+sync ${qd[-1]}  vhdx ${vd[-1]}"
done
fresh
rm -f ref.raw

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
mqn=$(median "${qn[@]}"); mvn=$(median "${vn[@]}"); mqd=$(median "${qd[@]}"); mvd=$(median "${vd[@]}")
echo
echo "unsynced: qemu-img convert ${qn[*]} (median $mqn)  vhdx convert --no-sync ${vn[*]} (median $mvn)"
echo "          qemu / vhdx = $(awk -v a="$mqn" -v b="$mvn" 'BEGIN { printf "%.2f", a / b }')"
echo "durable:  qemu-img convert + sync ${qd[*]} (median $mqd)  vhdx convert ${vd[*]} (median $mvd)"
echo "          qemu / vhdx = $(awk -v a="$mqd" -v b="$mvd" 'BEGIN { printf "%.2f", a / b }')"
