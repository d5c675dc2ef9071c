/*
 * Creating fixed and dynamic images, writing and reading patterns at
 * unaligned offsets and across blocks, reopening, and the queries.
 *
 * Leaves WORK_DIR/c_dynamic.vhdx and c_fixed512.vhdx behind for
 * run-tests.sh to cross-check with qemu-img (check, and convert against
 * vhdx2raw), each with NAME.expected.raw: the bytes this test wrote there,
 * built from its own patterns, not read back through the library.
 */
#include "common.h"

#define MIB (1024u * 1024u)

struct piece {
    uint64_t offset;
    size_t len;
    unsigned seed;
};

/* Writes the pieces to `d`, and to the raw reference `raw` unless NULL. */
static void write_pieces(VhdxDisk *d, const char *raw, const struct piece *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        uint8_t *buf = (uint8_t *)xmalloc(p[i].len);
        fill_pattern(buf, p[i].len, p[i].offset, p[i].seed);
        CHECK_OK(vhdx_write_at(d, p[i].offset, buf, p[i].len));
        if (raw != NULL) raw_put(raw, p[i].offset, buf, p[i].len);
        free(buf);
    }
}

static void verify_pieces(VhdxDisk *d, const struct piece *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        uint8_t *buf = (uint8_t *)xmalloc(p[i].len);
        CHECK_OK(vhdx_read_at(d, p[i].offset, buf, p[i].len));
        CHECK(has_pattern(buf, p[i].len, p[i].offset, p[i].seed));
        free(buf);
    }
}

static void test_dynamic(const char *dir) {
    char path[4096], raw[4096];
    VhdxDisk *d = NULL;
    VhdxInfo info = {.struct_size = sizeof info};
    uint8_t *buf;
    char text[64];
    const uint64_t size = 64 * MIB;
    /* Unaligned, across a block boundary, the last sector, a whole block. */
    const struct piece pieces[] = {
        {12345, 100000, 1},
        {MIB - 5000, 10000, 2},
        {size - 4096, 4096, 3},
        {10 * MIB, MIB, 4},
    };
    const size_t n = sizeof pieces / sizeof pieces[0];

    path_in(path, dir, "c_dynamic.vhdx");
    path_in(raw, dir, "c_dynamic.expected.raw");
    raw_create(raw, size);
    CHECK_OK(vhdx_create_dynamic(path, size, MIB, 512, &d));
    CHECK(d != NULL);
    CHECK(vhdx_virtual_size(d) == size);
    CHECK(vhdx_logical_sector_size(d) == 512);
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_DYNAMIC);
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.disk_type == VHDX_DISK_TYPE_DYNAMIC);
    CHECK(info.block_size == MIB);
    CHECK(info.virtual_size == size);
    CHECK(info.total_blocks == 64);
    CHECK(info.allocated_blocks == 0);
    CHECK(info.chain_length == 1);
    CHECK(info.writable);
    CHECK(!info.has_parent_linkage);

    /* A new disk reads as zeros. */
    buf = (uint8_t *)xmalloc(2 * MIB);
    memset(buf, 0xEE, 2 * MIB);
    CHECK_OK(vhdx_read_at(d, 0, buf, 2 * MIB));
    CHECK(all_zero(buf, 2 * MIB));

    write_pieces(d, raw, pieces, n);
    verify_pieces(d, pieces, n);
    /* Bytes around a piece stay zero. */
    CHECK_OK(vhdx_read_at(d, 12345 - 100, buf, 100));
    CHECK(all_zero(buf, 100));
    CHECK_OK(vhdx_read_at(d, 12345 + 100000, buf, 100));
    CHECK(all_zero(buf, 100));
    /* A zero-length access is fine, with or without a buffer. */
    CHECK_OK(vhdx_read_at(d, size, NULL, 0));
    CHECK_OK(vhdx_write_at(d, 0, NULL, 0));
    CHECK_OK(vhdx_flush(d));
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.allocated_blocks == 4); /* blocks 0, 1, 10 and 63 */

    /* GUIDs and paths come out as text. */
    CHECK(vhdx_guid_to_string(info.data_write_guid, text, sizeof text) == 38);
    CHECK(text[0] == '{' && text[37] == '}' && text[38] == '\0' && text[9] == '-');
    CHECK(vhdx_guid_to_string(info.data_write_guid, text, 5) == 38);
    CHECK(strlen(text) == 4);
    CHECK(vhdx_chain_length(d) == 1);
    CHECK(vhdx_chain_path(d, 0, NULL, 0) == (int32_t)strlen(path));
    {
        char got[4096];
        CHECK(vhdx_chain_path(d, 0, got, sizeof got) == (int32_t)strlen(path));
        CHECK(strcmp(got, path) == 0);
        CHECK(vhdx_chain_path(d, 0, got, 4) == (int32_t)strlen(path));
        CHECK(strlen(got) == 3);
    }
    CHECK_OK(vhdx_close_checked(d));

    /* Reopen read-only: everything is still there. */
    d = NULL;
    CHECK_OK(vhdx_open(path, false, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_DYNAMIC);
    verify_pieces(d, pieces, n);
    CHECK_OK(vhdx_info(d, &info));
    CHECK(!info.writable);
    CHECK(!info.log_replayed);
    vhdx_close(d);

    /* Reopen writable, overwrite part of a piece, reopen and check both. */
    CHECK_OK(vhdx_open(path, true, &d));
    {
        const struct piece over[] = {{12345 + 50000, 777, 9}};
        write_pieces(d, raw, over, 1);
        vhdx_close(d);
        CHECK_OK(vhdx_open(path, false, &d));
        verify_pieces(d, over, 1);
        CHECK_OK(vhdx_read_at(d, 12345, buf, 50000));
        CHECK(has_pattern(buf, 50000, 12345, 1));
        vhdx_close(d);
    }
    free(buf);
}

static void test_fixed(const char *dir) {
    char path[4096], raw[4096];
    VhdxDisk *d = NULL;
    VhdxInfo info = {.struct_size = sizeof info};
    const uint64_t size = 8 * MIB;
    const struct piece pieces[] = {{4096, 8192, 5}, {size - 100, 100, 6}, {3 * MIB + 1, 65536, 7}};

    path_in(path, dir, "c_fixed.vhdx");
    /* Block size 0: the default (32 MiB); 4096-byte logical sectors. */
    CHECK_OK(vhdx_create_fixed(path, size, 0, 4096, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_FIXED);
    CHECK(vhdx_logical_sector_size(d) == 4096);
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.block_size == 32 * MIB);
    CHECK(info.logical_sector_size == 4096);
    CHECK(info.allocated_blocks == info.total_blocks);
    CHECK(info.file_size >= size);
    write_pieces(d, NULL, pieces, 3);
    verify_pieces(d, pieces, 3);
    vhdx_close(d);
    CHECK_OK(vhdx_open(path, false, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_FIXED);
    verify_pieces(d, pieces, 3);
    vhdx_close(d);

    /* A fixed disk with 512-byte sectors (QEMU reads only those), for
     * run-tests.sh to check with qemu-img. */
    path_in(path, dir, "c_fixed512.vhdx");
    path_in(raw, dir, "c_fixed512.expected.raw");
    raw_create(raw, size);
    CHECK_OK(vhdx_create_fixed(path, size, MIB, 512, &d));
    write_pieces(d, raw, pieces, 3);
    vhdx_close(d);

    /* Defaults for a dynamic disk: 32 MiB blocks, 512-byte sectors. */
    path_in(path, dir, "c_defaults.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, size, 0, 0, &d));
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.block_size == 32 * MIB);
    CHECK(info.logical_sector_size == 512);
    CHECK(info.physical_sector_size == 4096);
    vhdx_close(d);
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    CHECK(strlen(vhdx_version()) > 0);
    CHECK(strcmp(vhdx_last_error(), "") == 0);
    test_dynamic(dir);
    test_fixed(dir);
    /* Closing NULL is a no-op. */
    vhdx_close(NULL);
    CHECK_OK(vhdx_close_checked(NULL));
    CHECK(strcmp(vhdx_last_error(), "") == 0);
    return finish("test_basic");
}
