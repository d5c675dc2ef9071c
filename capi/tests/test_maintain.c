/*
 * Resizing, discarding, compacting and converting through the C API:
 * contents read back, the refusals and their status codes, the reports.
 *
 * Leaves WORK_DIR/c_maintained.vhdx (grown, shrunk, discarded, compacted)
 * and WORK_DIR/c_converted_fixed.vhdx behind for run-tests.sh to check with
 * qemu-img, and c_converted.raw to compare with qemu-img convert.
 */
#include "common.h"

#define MIB (1024u * 1024u)

static void read_expect_pattern(VhdxDisk *d, uint64_t offset, size_t len, unsigned seed) {
    uint8_t *buf = (uint8_t *)xmalloc(len);
    CHECK_OK(vhdx_read_at(d, offset, buf, len));
    CHECK(has_pattern(buf, len, offset, seed));
    free(buf);
}

static void read_expect_zero(VhdxDisk *d, uint64_t offset, size_t len) {
    uint8_t *buf = (uint8_t *)xmalloc(len);
    memset(buf, 0xEE, len);
    CHECK_OK(vhdx_read_at(d, offset, buf, len));
    CHECK(all_zero(buf, len));
    free(buf);
}

static void write_pattern(VhdxDisk *d, uint64_t offset, size_t len, unsigned seed) {
    uint8_t *buf = (uint8_t *)xmalloc(len);
    fill_pattern(buf, len, offset, seed);
    CHECK_OK(vhdx_write_at(d, offset, buf, len));
    free(buf);
}

static long file_size(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) FAIL("cannot stat %s", path);
    return (long)st.st_size;
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    char path[4096], fixed[4096], raw[4096], back[4096], tiny[4096];
    VhdxDisk *d = NULL;
    VhdxCompactReport compact = {.struct_size = sizeof compact};
    VhdxConvertOptions options;
    VhdxConvertReport converted = {.struct_size = sizeof converted};

    path_in(path, dir, "c_maintained.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, 16 * MIB, MIB, 512, &d));
    write_pattern(d, 0, 6 * MIB, 1);
    write_pattern(d, 15 * MIB, MIB, 2);

    /* Grow: new sectors read as zeros. */
    CHECK_OK(vhdx_resize(d, 40 * MIB, false));
    CHECK(vhdx_virtual_size(d) == 40 * MIB);
    read_expect_zero(d, 16 * MIB, MIB);
    read_expect_pattern(d, 15 * MIB, MIB, 2);
    write_pattern(d, 39 * MIB, MIB, 3);

    /* Shrink over data: refused, nothing changes; allowed with the flag. */
    CHECK_ERR(vhdx_resize(d, 20 * MIB, false), VHDX_ERR_REFUSED, "c_maintained.vhdx");
    CHECK(vhdx_virtual_size(d) == 40 * MIB);
    CHECK_ERR(vhdx_resize(d, 20 * MIB + 100, true), VHDX_ERR_INVALID_ARGUMENT, "multiple");
    CHECK_OK(vhdx_resize(d, 20 * MIB, true));
    CHECK(vhdx_virtual_size(d) == 20 * MIB);
    CHECK_OK(vhdx_resize(d, 24 * MIB, false));
    read_expect_zero(d, 20 * MIB, 4 * MIB);

    /* Discard: whole blocks and an unaligned piece read as zeros. */
    CHECK_OK(vhdx_discard(d, MIB, 3 * MIB));
    CHECK_OK(vhdx_discard(d, 5 * MIB + 3, 1000));
    read_expect_zero(d, MIB, 3 * MIB);
    read_expect_zero(d, 5 * MIB + 3, 1000);
    read_expect_pattern(d, 5 * MIB + 1003, 4096, 1);
    CHECK_ERR(vhdx_discard(d, 24 * MIB - 512, 1024), VHDX_ERR_OUT_OF_RANGE, "c_maintained.vhdx");
    CHECK_ERR(vhdx_discard(NULL, 0, 512), VHDX_ERR_INVALID_ARGUMENT, "disk");

    /* Compact: the discarded blocks (and the one past the shrink) give back their space. */
    CHECK_OK(vhdx_flush(d));
    CHECK_OK(vhdx_compact(d, &compact));
    CHECK(compact.file_size_after < compact.file_size_before);
    CHECK(compact.structures_moved > 0);
    CHECK_OK(vhdx_close_checked(d));
    CHECK((long)compact.file_size_after == file_size(path));

    /* Reopened: the same bytes. */
    CHECK_OK(vhdx_open(path, false, &d));
    read_expect_pattern(d, 0, MIB, 1);
    read_expect_zero(d, MIB, 3 * MIB);
    read_expect_pattern(d, 4 * MIB, MIB, 1);
    read_expect_pattern(d, 15 * MIB, MIB, 2);
    read_expect_zero(d, 16 * MIB, 8 * MIB);
    CHECK_ERR(vhdx_discard(d, 0, 512), VHDX_ERR_READ_ONLY, "read-only");
    CHECK_ERR(vhdx_resize(d, 32 * MIB, false), VHDX_ERR_READ_ONLY, "read-only");
    vhdx_close(d);

    /* Convert: to a fixed VHDX, to raw, and back. */
    path_in(fixed, dir, "c_converted_fixed.vhdx");
    path_in(raw, dir, "c_converted.raw");
    path_in(back, dir, "c_back.vhdx");
    CHECK_OK(vhdx_convert_options_init(&options, sizeof options));
    options.disk_type = VHDX_DISK_TYPE_FIXED;
    options.block_size = 2 * MIB;
    CHECK_OK(vhdx_convert(path, fixed, &options, &converted));
    CHECK(converted.virtual_size == 24 * MIB);
    CHECK(converted.bytes_written == 4 * MIB); /* blocks 0, 4, 5 and 15 */
    CHECK_OK(vhdx_open(fixed, false, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_FIXED);
    read_expect_pattern(d, 4 * MIB, MIB, 1);
    read_expect_zero(d, 5 * MIB + 3, 1000);
    vhdx_close(d);
    CHECK_OK(vhdx_convert(fixed, raw, NULL, NULL));
    CHECK(file_size(raw) == 24 * MIB);
    CHECK_OK(vhdx_convert(raw, back, NULL, &converted));
    CHECK_OK(vhdx_open(back, false, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_DYNAMIC);
    read_expect_pattern(d, 15 * MIB, MIB, 2);
    read_expect_zero(d, MIB, 3 * MIB);
    vhdx_close(d);

    /* Refusals: an existing output, the source itself, bad options, a fixed
       disk to compact. */
    CHECK_ERR(vhdx_convert(path, fixed, NULL, NULL), VHDX_ERR_REFUSED, "c_converted_fixed.vhdx");
    CHECK_OK(vhdx_convert_options_init(&options, sizeof options));
    options.overwrite = true;
    CHECK_ERR(vhdx_convert(path, path, &options, NULL), VHDX_ERR_REFUSED, "source image itself");
    CHECK(file_size(path) > 0);
    /* Replacing an existing output: the raw image becomes the dynamic one's. */
    CHECK_OK(vhdx_convert(path, raw, &options, &converted));
    CHECK(file_size(raw) == 24 * MIB);
    options.output_format = 7;
    path_in(tiny, dir, "never.vhdx");
    CHECK_ERR(vhdx_convert(path, tiny, &options, NULL), VHDX_ERR_INVALID_ARGUMENT, "output_format");
    CHECK_ERR(vhdx_convert_options_init(NULL, sizeof(VhdxConvertOptions)), VHDX_ERR_INVALID_ARGUMENT, "options");
    CHECK_OK(vhdx_open(fixed, true, &d));
    CHECK_ERR(vhdx_compact(d, NULL), VHDX_ERR_INVALID_ARGUMENT, "fixed");
    vhdx_close(d);

    /* vhdx_compact_filesystems: an MBR with one partition (1..9 MiB) that
     * holds no known filesystem; data in it, and data outside every
     * partition. The partition keeps its bytes; the blocks outside it go
     * (they read as zeros after), the MBR's block stays. */
    {
        char fsdisk[4096], details[512];
        uint8_t mbr[512] = {0};
        VhdxFsCompactReport fr = {.struct_size = sizeof fr};
        path_in(fsdisk, dir, "c_fs_compact.vhdx");
        CHECK_OK(vhdx_create_dynamic(fsdisk, 32 * MIB, MIB, 512, &d));
        mbr[446 + 4] = 0x83;             /* Linux */
        mbr[446 + 8] = 0x00;             /* first LBA 2048 (little-endian) */
        mbr[446 + 9] = 0x08;
        mbr[446 + 12] = 0x00;            /* 16384 sectors: 8 MiB */
        mbr[446 + 13] = 0x40;
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        CHECK_OK(vhdx_write_at(d, 0, mbr, sizeof mbr));
        write_pattern(d, 2 * MIB, 3 * MIB, 21);  /* inside the partition */
        write_pattern(d, 12 * MIB, 6 * MIB, 22); /* outside every partition */
        CHECK_OK(vhdx_compact_filesystems(d, true, &fr, details, sizeof details));
        CHECK(fr.table == VHDX_TABLE_MBR && fr.partitions == 1 && fr.filesystems_read == 0);
        CHECK(fr.filesystems_skipped == 1 && fr.block_size == MIB && fr.blocks_in_free_space == 6);
        CHECK(fr.file_size_before == 0 && fr.free_bytes == 32 * MIB - 9 * MIB - 33 * 512);
        CHECK(strstr(details, "partition 1: left alone") != NULL);
        read_expect_pattern(d, 12 * MIB, 6 * MIB, 22); /* a dry run changes nothing */
        CHECK_OK(vhdx_compact_filesystems(d, false, &fr, NULL, 0));
        CHECK(fr.blocks_in_free_space == 6 && fr.file_size_after < fr.file_size_before);
        read_expect_zero(d, 12 * MIB, 6 * MIB);
        read_expect_pattern(d, 2 * MIB, 3 * MIB, 21);
        {
            uint8_t back[512];
            CHECK_OK(vhdx_read_at(d, 0, back, sizeof back));
            CHECK(memcmp(back, mbr, sizeof mbr) == 0);
        }
        vhdx_close(d);
        CHECK_OK(vhdx_open(fsdisk, false, &d));
        CHECK_ERR(vhdx_compact_filesystems(d, false, &fr, NULL, 0), VHDX_ERR_READ_ONLY, "read-only");
        CHECK_OK(vhdx_compact_filesystems(d, true, &fr, NULL, 0));
        CHECK(fr.blocks_in_free_space == 0);
        vhdx_close(d);
    }

    return finish("test_maintain");
}
