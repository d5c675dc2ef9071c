#!/usr/bin/env bash
# The benchmark workloads through `qemu-img bench`, for comparison with
# `cargo bench --bench io` (see BENCHMARKS.md). QEMU reads and writes at a
# fixed step rather than at random offsets, has no differencing VHDX
# support, and measures whole runs, so its figures are ratios of run times:
# raw over VHDX, as in the criterion table.
#
#   benches/qemu-bench.sh [DIR]     (default: a temporary directory)
#
# Makes a 1 GiB raw file and a fully allocated 1 GiB dynamic VHDX with the
# same content (QEMU's own vhdx driver, 32 MiB blocks as ours), warms the
# page cache, and times each workload three times, reporting the median.
set -euo pipefail

dir="${1:-$(mktemp -d)}"
mkdir -p "$dir"
raw="$dir/qb.raw"
vhdx="$dir/qb.vhdx"
size=1G

qemu-img create -q -f raw "$raw" "$size"
qemu-io -f raw -c "write -P 0x5a 0 $size" "$raw" >/dev/null
qemu-img convert -q -f raw -O vhdx -o subformat=dynamic "$raw" "$vhdx"
cat "$raw" "$vhdx" >/dev/null

# Median of three runs of `qemu-img bench`, as the time it reports itself
# (the run, without starting QEMU and opening the image).
median_time() {
    local times=()
    for _ in 1 2 3; do
        times+=("$("$@" | awk '/Run completed in/ { print $4 }')")
    done
    printf '%s\n' "${times[@]}" | sort -g | sed -n 2p
}

row() {
    local name="$1"
    shift
    local t_raw t_vhdx
    t_raw=$(median_time qemu-img bench -f raw -t writeback -i threads "$@" "$raw")
    t_vhdx=$(median_time qemu-img bench -f vhdx -t writeback -i threads "$@" "$vhdx")
    printf '| %-22s | %8.3f s | %8.3f s | %5.2f |\n' "$name" "$t_raw" "$t_vhdx" "$(awk -v a="$t_raw" -v b="$t_vhdx" 'BEGIN { print a / b }')"
}

echo "qemu-img bench, $(qemu-img --version | head -n 1), queue depth 1, page cache (-t writeback)"
echo
echo "| workload               |  raw      |  vhdx     | raw/vhdx |"
echo "|------------------------|-----------|-----------|----------|"
row "read 4k (step 16k)" -d 1 -c 65536 -s 4k -S 16k
row "read 1m sequential" -d 1 -c 1024 -s 1M
row "write 4k (step 16k)" -d 1 -c 65536 -s 4k -S 16k -w
if [ $# -eq 0 ]; then
    rm -rf "$dir"
fi
