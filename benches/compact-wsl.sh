#!/usr/bin/env bash
# WSL's ext4.vhdx, before and after: `vhdx compact` (reading ext4's own
# bitmaps, offline) beside the usual Linux route, zero-filling the free
# space and copying the image with `qemu-img convert`, on the same image in
# one run (see the README's "Compact by the guest's filesystems").
#
#   benches/compact-wsl.sh [DIR]     (default: a temporary directory)
#
# Needs vhdx on PATH (cargo install --path . --features cli), mkfs.ext4,
# debugfs, zerofree (the offline zero-fill; inside a running guest one would
# write a file of zeros until the disk is full, then delete it: slower) and
# qemu-img. Makes a 4 GiB ext4 on a dynamic VHDX without a partition table
# and with 1 MiB blocks, as WSL makes them (qemu-img's output gets the same
# block size), writes 1.5 GiB of files and deletes 1.2 GiB of them, then
# times both routes from copies of that image. Times are wall-clock seconds
# of each command, and include flushing to disk.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

dir="${1:-$(mktemp -d)}"
mkdir -p "$dir"
cd "$dir"

truncate -s 4G fs.raw
mkfs.ext4 -q -F fs.raw
for i in 1 2 3; do
    head -c 100M /dev/urandom >"keep$i.bin"
    debugfs -w -R "write keep$i.bin keep$i.bin" fs.raw >/dev/null 2>&1
done
for i in 1 2 3 4 5 6; do
    head -c 200M /dev/urandom >"gone$i.bin"
    debugfs -w -R "write gone$i.bin gone$i.bin" fs.raw >/dev/null 2>&1
done
for i in 1 2 3 4 5 6; do
    debugfs -w -R "rm gone$i.bin" fs.raw >/dev/null 2>&1
done
vhdx convert fs.raw ext4.vhdx --block-size 1M >/dev/null
sync

size() { stat -c %s "$1"; }
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    sync
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}

before=$(size ext4.vhdx)

# 1. vhdx compact, in place.
cp ext4.vhdx ours.vhdx
sync
t_ours=$(seconds vhdx compact ours.vhdx)
after_ours=$(size ours.vhdx)

# 2. Zero-fill the free space, then copy the image with qemu-img convert
#    (which skips zeros), as the Linux recipes do.
cp ext4.vhdx theirs.vhdx
sync
t_raw=$(seconds qemu-img convert -f vhdx -O raw theirs.vhdx theirs.raw)
t_zero=$(seconds zerofree theirs.raw)
t_back=$(seconds qemu-img convert -f raw -O vhdx -o subformat=dynamic,block_size=1048576 theirs.raw theirs-new.vhdx)
after_theirs=$(size theirs-new.vhdx)
t_theirs=$(echo "$t_raw + $t_zero + $t_back" | bc)

# The same filesystem both ways.
vhdx convert ours.vhdx ours.raw >/dev/null
e2fsck -fn ours.raw >/dev/null
for i in 1 2 3; do
    debugfs -R "dump keep$i.bin check$i.bin" ours.raw >/dev/null 2>&1
    cmp -s "check$i.bin" "keep$i.bin"
done

mib() { echo "$1 / 1048576" | bc; }
printf '| route | file before | file after | time (s) |\n|---|---|---|---|\n'
printf '| `vhdx compact` (ext4 bitmaps, in place) | %s MiB | %s MiB | %.1f |\n' "$(mib "$before")" "$(mib "$after_ours")" "$t_ours"
printf '| zerofree + `qemu-img convert` (to raw, zero-fill, back) | %s MiB | %s MiB | %.1f |\n' "$(mib "$before")" \
    "$(mib "$after_theirs")" "$t_theirs"
