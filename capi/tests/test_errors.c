/*
 * Every error path gives a status and a message, never a crash: NULL
 * arguments, bad parameters, accesses past the end, writes to read-only
 * disks, missing and mismatched parents, corrupt and missing files.
 * Messages name the file concerned (or the argument at fault).
 */
#include "common.h"

#define MIB (1024u * 1024u)

/* A non-NULL value to see that failures store NULL in *out. */
static int sentinel_target;
#define SENTINEL ((VhdxDisk *)(void *)&sentinel_target)

static void test_null_arguments(const char *dir) {
    char path[4096];
    VhdxDisk *d = SENTINEL;
    VhdxInfo info = {.struct_size = sizeof info};
    VhdxOpenOptions oo;
    VhdxMergeOptions mo;
    uint8_t buf[16];
    char text[64];

    memset(buf, 0, sizeof buf);
    path_in(path, dir, "null_args.vhdx");
    CHECK_ERR(vhdx_open(NULL, false, &d), VHDX_ERR_INVALID_ARGUMENT, "`path` is NULL");
    CHECK(d == NULL);
    CHECK_ERR(vhdx_open("", false, &d), VHDX_ERR_INVALID_ARGUMENT, "empty path");
    CHECK_ERR(vhdx_open(path, false, NULL), VHDX_ERR_INVALID_ARGUMENT, "`out` is NULL");
    d = SENTINEL;
    CHECK_ERR(vhdx_create_dynamic(NULL, MIB, 0, 0, &d), VHDX_ERR_INVALID_ARGUMENT, "vhdx_create_dynamic: `path`");
    CHECK(d == NULL);
    CHECK_ERR(vhdx_create_dynamic(path, MIB, 0, 0, NULL), VHDX_ERR_INVALID_ARGUMENT, "`out` is NULL");
    CHECK_ERR(vhdx_create_fixed(NULL, MIB, 0, 0, &d), VHDX_ERR_INVALID_ARGUMENT, "vhdx_create_fixed: `path`");
    CHECK_ERR(vhdx_create_fixed(path, MIB, 0, 0, NULL), VHDX_ERR_INVALID_ARGUMENT, "`out` is NULL");
    CHECK_ERR(vhdx_create_differencing(NULL, path, &d), VHDX_ERR_INVALID_ARGUMENT, "`path` is NULL");
    CHECK_ERR(vhdx_create_differencing(path, NULL, &d), VHDX_ERR_INVALID_ARGUMENT, "`parent_path` is NULL");
    CHECK_ERR(vhdx_create_differencing(path, path, NULL), VHDX_ERR_INVALID_ARGUMENT, "`out` is NULL");

    CHECK(vhdx_virtual_size(NULL) == 0);
    CHECK(strstr(vhdx_last_error(), "vhdx_virtual_size: `disk` is NULL") != NULL);
    CHECK(vhdx_logical_sector_size(NULL) == 0);
    CHECK(strstr(vhdx_last_error(), "vhdx_logical_sector_size: `disk` is NULL") != NULL);
    CHECK_ERR(vhdx_disk_type(NULL), VHDX_ERR_INVALID_ARGUMENT, "vhdx_disk_type: `disk` is NULL");
    CHECK_ERR(vhdx_read_at(NULL, 0, buf, sizeof buf), VHDX_ERR_INVALID_ARGUMENT, "vhdx_read_at: `disk` is NULL");
    CHECK_ERR(vhdx_write_at(NULL, 0, buf, sizeof buf), VHDX_ERR_INVALID_ARGUMENT, "vhdx_write_at: `disk`");
    CHECK_ERR(vhdx_flush(NULL), VHDX_ERR_INVALID_ARGUMENT, "vhdx_flush: `disk` is NULL");
    CHECK_ERR(vhdx_info(NULL, &info), VHDX_ERR_INVALID_ARGUMENT, "vhdx_info: `disk` is NULL");
    CHECK_ERR(vhdx_chain_length(NULL), VHDX_ERR_INVALID_ARGUMENT, "`disk` is NULL");
    CHECK_ERR(vhdx_chain_path(NULL, 0, text, sizeof text), VHDX_ERR_INVALID_ARGUMENT, "`disk` is NULL");
    CHECK_ERR(vhdx_merge(NULL, 1), VHDX_ERR_INVALID_ARGUMENT, "`child_path` is NULL");
    CHECK_ERR(vhdx_merge_with(NULL, NULL, NULL), VHDX_ERR_INVALID_ARGUMENT, "`child_path` is NULL");
    CHECK_ERR(vhdx_set_parent(NULL, path, false), VHDX_ERR_INVALID_ARGUMENT, "`child_path` is NULL");
    CHECK_ERR(vhdx_set_parent(path, NULL, false), VHDX_ERR_INVALID_ARGUMENT, "`parent_path` is NULL");
    CHECK_ERR(vhdx_check(NULL, NULL, 0), VHDX_ERR_INVALID_ARGUMENT, "vhdx_check: `path` is NULL");
    CHECK_ERR(vhdx_repair(NULL, NULL, 0), VHDX_ERR_INVALID_ARGUMENT, "vhdx_repair: `path` is NULL");
    CHECK_ERR(vhdx_guid_to_string(NULL, text, sizeof text), VHDX_ERR_INVALID_ARGUMENT, "`guid` is NULL");
    CHECK_ERR(vhdx_open_options_init(NULL, sizeof(VhdxOpenOptions)), VHDX_ERR_INVALID_ARGUMENT, "`options` is NULL");
    CHECK_ERR(vhdx_merge_options_init(NULL, sizeof(VhdxMergeOptions)), VHDX_ERR_INVALID_ARGUMENT, "`options` is NULL");
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    CHECK_ERR(vhdx_open_with(NULL, &oo, &d), VHDX_ERR_INVALID_ARGUMENT, "vhdx_open_with: `path` is NULL");
    CHECK_ERR(vhdx_open_with(path, &oo, NULL), VHDX_ERR_INVALID_ARGUMENT, "`out` is NULL");
    CHECK_ERR(vhdx_open_callbacks(NULL, "x", NULL, &d), VHDX_ERR_INVALID_ARGUMENT, "`storage` is NULL");
    CHECK_ERR(vhdx_create_dynamic_callbacks(NULL, MIB, 0, 0, &d), VHDX_ERR_INVALID_ARGUMENT, "`storage` is NULL");
    CHECK_ERR(vhdx_create_fixed_callbacks(NULL, MIB, 0, 0, &d), VHDX_ERR_INVALID_ARGUMENT, "`storage` is NULL");
    /* A count with a NULL array. */
    oo.parent_search_dir_count = 2;
    CHECK_ERR(vhdx_open_with(path, &oo, &d), VHDX_ERR_INVALID_ARGUMENT, "`parent_search_dirs` is NULL");
    CHECK_OK(vhdx_merge_options_init(&mo, sizeof mo));
    mo.search_dir_count = 1;
    CHECK_ERR(vhdx_merge_with(path, &mo, NULL), VHDX_ERR_INVALID_ARGUMENT, "`search_dirs` is NULL");

    /* NULL buffers on a live disk. */
    CHECK_OK(vhdx_create_dynamic(path, 4 * MIB, MIB, 512, &d));
    CHECK_ERR(vhdx_read_at(d, 0, NULL, 10), VHDX_ERR_INVALID_ARGUMENT, "vhdx_read_at: `buf` is NULL");
    CHECK_ERR(vhdx_write_at(d, 0, NULL, 10), VHDX_ERR_INVALID_ARGUMENT, "vhdx_write_at: `buf` is NULL");
    CHECK_ERR(vhdx_info(d, NULL), VHDX_ERR_INVALID_ARGUMENT, "vhdx_info: `info` is NULL");
    CHECK_ERR(vhdx_chain_path(d, 0, NULL, 10), VHDX_ERR_INVALID_ARGUMENT, "`buf` is NULL");
    CHECK_ERR(vhdx_chain_path(d, 1, text, sizeof text), VHDX_ERR_OUT_OF_RANGE, "index 1");
    CHECK_ERR(vhdx_guid_to_string(buf, NULL, 10), VHDX_ERR_INVALID_ARGUMENT, "`buf` is NULL");
    vhdx_close(d);
}

static void test_bad_parameters(const char *dir) {
    char path[4096];
    VhdxDisk *d = SENTINEL;
    FILE *f;

    path_in(path, dir, "bad_params.vhdx");
    CHECK_ERR(vhdx_create_dynamic(path, 8 * MIB, 3 * MIB, 512, &d), VHDX_ERR_INVALID_ARGUMENT, "bad_params.vhdx");
    CHECK(d == NULL);
    CHECK(strstr(vhdx_last_error(), "block size") != NULL);
    CHECK_ERR(vhdx_create_dynamic(path, 8 * MIB, MIB, 1000, &d), VHDX_ERR_INVALID_ARGUMENT, "sector size 1000");
    CHECK_ERR(vhdx_create_fixed(path, 0, 0, 0, &d), VHDX_ERR_INVALID_ARGUMENT, "bad_params.vhdx");
    CHECK_ERR(vhdx_create_dynamic(path, 8 * MIB + 100, 0, 512, &d), VHDX_ERR_INVALID_ARGUMENT, "multiple");
    CHECK_ERR(vhdx_create_dynamic(path, (uint64_t)1 << 50, 0, 512, &d), VHDX_ERR_INVALID_ARGUMENT, "64 TiB");
    /* Nothing was left behind by the failed creates. */
    f = fopen(path, "rb");
    CHECK(f == NULL);

    /* An existing file is not overwritten. */
    f = fopen(path, "wb");
    CHECK(f != NULL);
    fputs("precious", f);
    fclose(f);
    CHECK_ERR(vhdx_create_dynamic(path, 8 * MIB, 0, 0, &d), VHDX_ERR_IO, "bad_params.vhdx");
    {
        char got[16] = {0};
        f = fopen(path, "rb");
        CHECK(f != NULL);
        CHECK(fread(got, 1, sizeof got - 1, f) == 8);
        fclose(f);
        CHECK(strcmp(got, "precious") == 0);
    }
}

static void test_ranges_and_read_only(const char *dir) {
    char path[4096];
    VhdxDisk *d = NULL;
    uint8_t buf[4096];
    const uint64_t size = 4 * MIB;

    path_in(path, dir, "ranges.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, size, MIB, 512, &d));
    memset(buf, 0x5A, sizeof buf);
    CHECK_ERR(vhdx_read_at(d, size - 10, buf, 20), VHDX_ERR_OUT_OF_RANGE, "ranges.vhdx");
    CHECK_ERR(vhdx_read_at(d, size + 1, buf, 0), VHDX_ERR_OUT_OF_RANGE, "ranges.vhdx");
    CHECK_ERR(vhdx_read_at(d, UINT64_MAX - 5, buf, 20), VHDX_ERR_OUT_OF_RANGE, "outside the virtual disk");
    CHECK_ERR(vhdx_write_at(d, size - 10, buf, 20), VHDX_ERR_OUT_OF_RANGE, "ranges.vhdx");
    CHECK_ERR(vhdx_write_at(d, UINT64_MAX, buf, 1), VHDX_ERR_OUT_OF_RANGE, "ranges.vhdx");
    /* The failed write changed nothing; the disk still works. */
    CHECK_OK(vhdx_read_at(d, size - 10, buf, 10));
    CHECK(all_zero(buf, 10));
    memset(buf, 0x5A, sizeof buf);
    CHECK_OK(vhdx_write_at(d, 0, buf, sizeof buf));
    vhdx_close(d);

    CHECK_OK(vhdx_open(path, false, &d));
    CHECK_ERR(vhdx_write_at(d, 0, buf, sizeof buf), VHDX_ERR_READ_ONLY, "ranges.vhdx");
    CHECK(strstr(vhdx_last_error(), "read-only") != NULL);
    CHECK_OK(vhdx_flush(d)); /* a no-op on a read-only disk */
    CHECK_OK(vhdx_read_at(d, 0, buf, sizeof buf));
    CHECK(buf[0] == 0x5A && buf[4095] == 0x5A);
    CHECK_OK(vhdx_close_checked(d));
}

static void test_missing_and_corrupt(const char *dir) {
    char path[4096], other[4096];
    VhdxDisk *d = SENTINEL;
    FILE *f;
    uint8_t *junk;
    char report[4096];
    int32_t rc;

    path_in(path, dir, "does_not_exist.vhdx");
    CHECK_ERR(vhdx_open(path, false, &d), VHDX_ERR_IO, "does_not_exist.vhdx");
    CHECK(d == NULL);
    CHECK_ERR(vhdx_check(path, NULL, 0), VHDX_ERR_IO, "does_not_exist.vhdx");

    /* 2 MiB of junk is not a VHDX image. */
    path_in(path, dir, "junk.vhdx");
    junk = (uint8_t *)xmalloc(2 * MIB);
    fill_pattern(junk, 2 * MIB, 0, 42);
    f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(junk, 1, 2 * MIB, f) == 2 * MIB);
    fclose(f);
    d = SENTINEL;
    CHECK_ERR(vhdx_open(path, false, &d), VHDX_ERR_CORRUPT, "junk.vhdx");
    CHECK(d == NULL);
    CHECK_ERR(vhdx_open(path, true, &d), VHDX_ERR_CORRUPT, "junk.vhdx");
    rc = vhdx_check(path, report, sizeof report);
    CHECK(rc > 0);
    CHECK(strstr(report, "error: ") != NULL);

    /* A short file. */
    path_in(path, dir, "short.vhdx");
    f = fopen(path, "wb");
    CHECK(f != NULL);
    fputs("vhdxfile", f);
    fclose(f);
    CHECK_ERR(vhdx_open(path, false, &d), VHDX_ERR_CORRUPT, "short.vhdx");

    /* A real image with its first header destroyed still opens (the second
     * header is current); check counts the damage and repair mends it. */
    path_in(path, dir, "one_header.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, 8 * MIB, MIB, 512, &d));
    vhdx_close(d);
    f = fopen(path, "r+b");
    CHECK(f != NULL);
    CHECK(fseek(f, 64 * 1024, SEEK_SET) == 0);
    CHECK(fwrite(junk, 1, 4096, f) == 4096);
    CHECK(fseek(f, 128 * 1024, SEEK_SET) == 0);
    fclose(f);
    rc = vhdx_check(path, report, sizeof report);
    CHECK(rc >= 1);
    CHECK(strstr(report, "header") != NULL);
    CHECK_OK(vhdx_open(path, false, &d));
    vhdx_close(d);
    CHECK(vhdx_repair(path, report, sizeof report) == 0);
    CHECK(strstr(report, "repaired: ") != NULL);
    CHECK(vhdx_check(path, NULL, 0) == 0);

    /* Both headers destroyed: corrupt. */
    path_in(other, dir, "no_header.vhdx");
    copy_file(path, other);
    f = fopen(other, "r+b");
    CHECK(f != NULL);
    CHECK(fseek(f, 64 * 1024, SEEK_SET) == 0);
    CHECK(fwrite(junk, 1, 128 * 1024, f) == 128 * 1024);
    fclose(f);
    CHECK_ERR(vhdx_open(other, false, &d), VHDX_ERR_CORRUPT, "no_header.vhdx");
    CHECK(d == NULL);
    free(junk);
}

static void test_parents(const char *dir) {
    char base[4096], child[4096], moved[4096];
    VhdxDisk *d = SENTINEL;
    VhdxOpenOptions oo;
    uint8_t buf[512];

    path_in(base, dir, "p_base.vhdx");
    path_in(child, dir, "p_child.vhdx");
    path_in(moved, dir, "p_base_moved.vhdx");
    CHECK_OK(vhdx_create_dynamic(base, 8 * MIB, MIB, 512, &d));
    memset(buf, 0xB0, sizeof buf);
    CHECK_OK(vhdx_write_at(d, 0, buf, sizeof buf));
    vhdx_close(d);
    CHECK_OK(vhdx_create_differencing(child, base, &d));
    vhdx_close(d);

    /* The parent is gone: the child names itself and the paths it tried. */
    CHECK(rename(base, moved) == 0);
    d = SENTINEL;
    CHECK_ERR(vhdx_open(child, false, &d), VHDX_ERR_PARENT_NOT_FOUND, "p_child.vhdx");
    CHECK(d == NULL);
    CHECK(strstr(vhdx_last_error(), "p_base.vhdx") != NULL);
    CHECK_ERR(vhdx_create_differencing(path_in(moved, dir, "p_grandchild.vhdx"), child, &d),
              VHDX_ERR_PARENT_NOT_FOUND, "p_child.vhdx");
    path_in(moved, dir, "p_base_moved.vhdx");

    /* The child-only view still opens, reads zeros, and takes no writes. */
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    oo.without_parent = true;
    CHECK_OK(vhdx_open_with(child, &oo, &d));
    CHECK(vhdx_chain_length(d) == 1);
    CHECK_OK(vhdx_read_at(d, 0, buf, sizeof buf));
    CHECK(all_zero(buf, sizeof buf));
    vhdx_close(d);

    /* Re-link to the moved parent; then the chain opens again. */
    CHECK_OK(vhdx_set_parent(child, moved, false));
    CHECK_OK(vhdx_open(child, false, &d));
    CHECK(vhdx_chain_length(d) == 2);
    CHECK_OK(vhdx_read_at(d, 0, buf, sizeof buf));
    CHECK(buf[0] == 0xB0 && buf[511] == 0xB0);
    vhdx_close(d);

    /* Writing to the parent changes its DataWriteGuid: the child refuses it. */
    CHECK_OK(vhdx_open(moved, true, &d));
    CHECK_OK(vhdx_write_at(d, 4096, buf, sizeof buf));
    vhdx_close(d);
    d = SENTINEL;
    CHECK_ERR(vhdx_open(child, false, &d), VHDX_ERR_PARENT_MISMATCH, "p_child.vhdx");
    CHECK(d == NULL);
    CHECK_ERR(vhdx_set_parent(child, moved, false), VHDX_ERR_PARENT_MISMATCH, "p_child.vhdx");

    /* Merging a disk that is not differencing, or too deep. */
    CHECK_ERR(vhdx_merge(moved, 1), VHDX_ERR_INVALID_ARGUMENT, "p_base_moved.vhdx");
    {
        VhdxMergeOptions mo;
        CHECK_OK(vhdx_merge_options_init(&mo, sizeof mo));
        mo.siblings = 7;
        CHECK_ERR(vhdx_merge_with(child, &mo, NULL), VHDX_ERR_INVALID_ARGUMENT, "siblings is 7");
    }
}

static void test_option_conflicts(const char *dir) {
    char path[4096], base[4096];
    VhdxDisk *parent = NULL, *d = SENTINEL;
    VhdxOpenOptions oo;

    path_in(base, dir, "conflict_base.vhdx");
    path_in(path, dir, "conflict.vhdx");
    CHECK_OK(vhdx_create_dynamic(base, 4 * MIB, MIB, 512, &parent));
    vhdx_close(parent);
    CHECK_OK(vhdx_open(base, false, &parent));
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    oo.without_parent = true;
    oo.parent = parent; /* consumed even though the call fails */
    CHECK_ERR(vhdx_open_with(path, &oo, &d), VHDX_ERR_INVALID_ARGUMENT, "at most one of");
    CHECK(d == NULL);
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    test_null_arguments(dir);
    test_bad_parameters(dir);
    test_ranges_and_read_only(dir);
    test_missing_and_corrupt(dir);
    test_parents(dir);
    test_option_conflicts(dir);
    return finish("test_errors");
}
