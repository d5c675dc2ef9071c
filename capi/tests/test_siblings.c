/*
 * Change sets and sibling merges: vhdx_change_set's count protocol against
 * the sectors written; vhdx_merge_siblings on disjoint sessions (with an
 * outsider preserved), a dry run that changes no byte of any file, a
 * conflict refused with its range listed, then decided by `prefer`.
 */
#include "common.h"

#define MIB (1024u * 1024u)
#define SIZE (8 * MIB)

static uint8_t *model_new(void) {
    uint8_t *m = (uint8_t *)xmalloc(SIZE);
    memset(m, 0, SIZE);
    return m;
}

static void write_model(const char *path, uint8_t *model, uint64_t offset, size_t len, unsigned seed) {
    VhdxDisk *d = NULL;
    CHECK_OK(vhdx_open(path, true, &d));
    fill_pattern(model + offset, len, offset, seed);
    CHECK_OK(vhdx_write_at(d, offset, model + offset, len));
    CHECK_OK(vhdx_close_checked(d));
}

static void verify_file(const char *path, const uint8_t *model) {
    VhdxDisk *d = NULL;
    uint8_t *buf = (uint8_t *)xmalloc(SIZE);
    CHECK_OK(vhdx_open(path, false, &d));
    CHECK_OK(vhdx_read_at(d, 0, buf, SIZE));
    CHECK(memcmp(buf, model, SIZE) == 0);
    vhdx_close(d);
    free(buf);
}

/* The whole file, for "nothing was modified". */
static uint8_t *slurp(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    CHECK(f != NULL);
    CHECK(fseek(f, 0, SEEK_END) == 0);
    *len = ftell(f);
    CHECK(fseek(f, 0, SEEK_SET) == 0);
    buf = (uint8_t *)xmalloc((size_t)*len + 1);
    CHECK(fread(buf, 1, (size_t)*len, f) == (size_t)*len);
    fclose(f);
    return buf;
}

struct snapshot {
    uint8_t *bytes[4];
    long len[4];
};

static void take(struct snapshot *s, const char *const *paths, int n) {
    int i;
    for (i = 0; i < n; i++) s->bytes[i] = slurp(paths[i], &s->len[i]);
}

static void unchanged(struct snapshot *s, const char *const *paths, int n) {
    int i;
    for (i = 0; i < n; i++) {
        long len;
        uint8_t *now = slurp(paths[i], &len);
        CHECK(len == s->len[i] && memcmp(now, s->bytes[i], (size_t)len) == 0);
        free(now);
    }
}

static void release(struct snapshot *s, int n) {
    int i;
    for (i = 0; i < n; i++) free(s->bytes[i]);
}

static void make_family(const char *base, const char *const *kids, int n, uint8_t *base_model) {
    VhdxDisk *d = NULL;
    int i;
    CHECK_OK(vhdx_create_dynamic(base, SIZE, MIB, 512, &d));
    CHECK_OK(vhdx_close_checked(d));
    write_model(base, base_model, 0, 3 * MIB, 1);
    for (i = 0; i < n; i++) {
        CHECK_OK(vhdx_create_differencing(kids[i], base, &d));
        CHECK_OK(vhdx_close_checked(d));
    }
}

static void test_change_set(const char *dir) {
    char base[4096], child[4096];
    const char *kids[1];
    uint8_t *model = model_new(), *child_model;
    VhdxDisk *d = NULL;
    VhdxRange ranges[8];
    VhdxOpenOptions oo;
    size_t count = 99;

    path_in(base, dir, "cs_base.vhdx");
    path_in(child, dir, "cs_child.vhdx");
    kids[0] = child;
    make_family(base, kids, 1, model);
    child_model = model_new();
    memcpy(child_model, model, SIZE);
    write_model(child, child_model, 1, 10, 2);                    /* sector 0 */
    write_model(child, child_model, 2 * MIB - 600, 1200, 3);      /* sectors 4094..4097, across blocks */
    write_model(child, child_model, 5 * MIB, 4096, 4);            /* sectors 10240..10247 */

    /* Opened without its parent: the change set needs only the child. */
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    oo.without_parent = true;
    CHECK_OK(vhdx_open_with(child, &oo, &d));
    CHECK_OK(vhdx_change_set(d, NULL, 0, &count));
    CHECK(count == 3);
    CHECK_OK(vhdx_change_set(d, ranges, 1, &count)); /* cut short: count still says 3 */
    CHECK(count == 3 && ranges[0].offset == 0 && ranges[0].length == 512);
    memset(ranges, 0, sizeof ranges);
    CHECK_OK(vhdx_change_set(d, ranges, 8, &count));
    CHECK(count == 3);
    CHECK(ranges[0].offset == 0 && ranges[0].length == 512);
    CHECK(ranges[1].offset == 2 * MIB - 1024 && ranges[1].length == 2048);
    CHECK(ranges[2].offset == 5 * MIB && ranges[2].length == 4096);
    CHECK_ERR(vhdx_change_set(d, NULL, 2, &count), VHDX_ERR_INVALID_ARGUMENT, "ranges");
    CHECK_ERR(vhdx_change_set(d, ranges, 8, NULL), VHDX_ERR_INVALID_ARGUMENT, "count");
    vhdx_close(d);
    CHECK_ERR(vhdx_change_set(NULL, ranges, 8, &count), VHDX_ERR_INVALID_ARGUMENT, "disk");
    /* A disk without a parent holds everything. */
    CHECK_OK(vhdx_open(base, false, &d));
    CHECK_OK(vhdx_change_set(d, ranges, 8, &count));
    CHECK(count == 1 && ranges[0].offset == 0 && ranges[0].length == SIZE);
    vhdx_close(d);
    verify_file(child, child_model);
    free(model);
    free(child_model);
}

static void test_disjoint(const char *dir) {
    char base[4096], s1[4096], s2[4096], other[4096];
    const char *kids[3], *all[4];
    uint8_t *base_model = model_new(), *m1, *m2, *mo, *merged;
    VhdxSiblingMergeOptions mo_opts;
    VhdxSiblingMergeReport report = {.struct_size = sizeof report};
    VhdxConflict conflicts[4];
    VhdxDisk *d = NULL;
    struct snapshot snap;
    size_t count;

    path_in(base, dir, "d_profile.vhdx");
    path_in(s1, dir, "d_s1.vhdx");
    path_in(s2, dir, "d_s2.vhdx");
    path_in(other, dir, "d_other.vhdx");
    kids[0] = s1;
    kids[1] = s2;
    kids[2] = other;
    make_family(base, kids, 3, base_model);
    m1 = model_new();
    m2 = model_new();
    mo = model_new();
    merged = model_new();
    memcpy(m1, base_model, SIZE);
    memcpy(m2, base_model, SIZE);
    memcpy(mo, base_model, SIZE);
    write_model(s1, m1, 4096, 8192, 5);            /* sectors 8..23 */
    write_model(s1, m1, 2 * MIB - 512, 1024, 6);   /* across a block boundary */
    write_model(s2, m2, 12288, 512, 7);            /* sector 24, next to s1's */
    write_model(s2, m2, 6 * MIB + 3, 100, 8);      /* sector 12288 */
    write_model(other, mo, 12288, 4096, 9);        /* the outsider holds sectors 24..31 */
    memcpy(merged, base_model, SIZE);
    memcpy(merged + 4096, m1 + 4096, 8192);
    memcpy(merged + 2 * MIB - 512, m1 + 2 * MIB - 512, 1024);
    memcpy(merged + 12288, m2 + 12288, 512);
    memcpy(merged + 6 * MIB, m2 + 6 * MIB, 512);

    all[0] = base;
    all[1] = s1;
    all[2] = s2;
    all[3] = other;
    take(&snap, all, 4);
    CHECK_OK(vhdx_sibling_merge_options_init(&mo_opts, sizeof mo_opts));
    CHECK(mo_opts.prefer == NULL && !mo_opts.dry_run && mo_opts.search_dir_count == 0);
    mo_opts.dry_run = true;
    memset(&report, 0xFF, sizeof report);
    report.struct_size = sizeof report;
    CHECK_OK(vhdx_merge_siblings(base, kids, 2, &mo_opts, &report, conflicts, 4));
    CHECK(!report.merged);
    CHECK(report.bytes_merged == 8192 + 1024 + 512 + 512);
    CHECK(report.conflicts == 0 && report.unresolved_conflicts == 0 && report.conflicting_bytes == 0);
    CHECK(report.preserved_images == 1);
    CHECK(report.bytes_preserved == 8192 + 1024 + 512); /* the outsider held sector 24 already */
    unchanged(&snap, all, 4);
    release(&snap, 4);

    mo_opts.dry_run = false;
    CHECK_OK(vhdx_merge_siblings(base, kids, 2, &mo_opts, &report, NULL, 0));
    CHECK(report.merged);
    CHECK(report.bytes_merged == 8192 + 1024 + 512 + 512);
    verify_file(base, merged);
    verify_file(s1, merged);
    verify_file(s2, merged);
    verify_file(other, mo);
    CHECK_OK(vhdx_open(s1, false, &d));
    CHECK_OK(vhdx_change_set(d, NULL, 0, &count));
    CHECK(count == 0); /* emptied into the parent */
    vhdx_close(d);
    CHECK(vhdx_check(base, NULL, 0) == 0);
    CHECK(vhdx_check(s1, NULL, 0) == 0);
    CHECK(vhdx_check(other, NULL, 0) == 0);
    free(base_model);
    free(m1);
    free(m2);
    free(mo);
    free(merged);
}

static void test_conflict(const char *dir) {
    char base[4096], a[4096], b[4096], stranger[4096];
    const char *kids[2], *all[3], *many[65];
    uint8_t *base_model = model_new(), *ma, *mb;
    VhdxSiblingMergeOptions opts;
    VhdxSiblingMergeReport report = {.struct_size = sizeof report};
    VhdxConflict conflicts[4];
    struct snapshot snap;
    int i;

    path_in(base, dir, "c_base.vhdx");
    path_in(a, dir, "c_a.vhdx");
    path_in(b, dir, "c_b.vhdx");
    path_in(stranger, dir, "c_stranger.vhdx");
    kids[0] = a;
    kids[1] = b;
    make_family(base, kids, 2, base_model);
    ma = model_new();
    mb = model_new();
    memcpy(ma, base_model, SIZE);
    memcpy(mb, base_model, SIZE);
    write_model(a, ma, 4 * MIB, 2048, 10);          /* sectors 8192..8195 */
    write_model(b, mb, 4 * MIB + 1024, 2048, 11);   /* sectors 8194..8197: 8194, 8195 conflict */
    write_model(b, mb, 7 * MIB, 512, 12);

    all[0] = base;
    all[1] = a;
    all[2] = b;
    take(&snap, all, 3);
    CHECK_OK(vhdx_sibling_merge_options_init(&opts, sizeof opts));
    memset(conflicts, 0, sizeof conflicts);
    CHECK_ERR(vhdx_merge_siblings(base, kids, 2, &opts, &report, conflicts, 4), VHDX_ERR_REFUSED, "c_base.vhdx");
    CHECK(strstr(vhdx_last_error(), "c_a.vhdx and") != NULL);
    CHECK(strstr(vhdx_last_error(), "0x400400..0x400800") != NULL);
    CHECK(!report.merged && report.conflicts == 1 && report.unresolved_conflicts == 1);
    CHECK(report.conflicting_bytes == 1024);
    CHECK(conflicts[0].offset == 4 * MIB + 1024 && conflicts[0].length == 1024);
    CHECK(conflicts[0].children == 3 && conflicts[0].winner == -1);
    unchanged(&snap, all, 3);

    /* Bad arguments: nothing modified either. */
    opts.prefer = stranger;
    CHECK_ERR(vhdx_merge_siblings(base, kids, 2, &opts, NULL, NULL, 0), VHDX_ERR_INVALID_ARGUMENT, "c_stranger.vhdx");
    opts.prefer = NULL;
    for (i = 0; i < 65; i++) many[i] = a;
    CHECK_ERR(vhdx_merge_siblings(base, many, 65, &opts, NULL, NULL, 0), VHDX_ERR_INVALID_ARGUMENT, "64");
    CHECK_ERR(vhdx_merge_siblings(base, many, 2, &opts, NULL, NULL, 0), VHDX_ERR_INVALID_ARGUMENT, "twice");
    CHECK_ERR(vhdx_merge_siblings(base, kids, 2, &opts, NULL, NULL, 3), VHDX_ERR_INVALID_ARGUMENT, "conflicts");
    CHECK_ERR(vhdx_merge_siblings(NULL, kids, 2, &opts, NULL, NULL, 0), VHDX_ERR_INVALID_ARGUMENT, "parent_path");
    unchanged(&snap, all, 3);
    release(&snap, 3);

    /* b preferred: its bytes win the two sectors. */
    opts.prefer = b;
    CHECK_OK(vhdx_merge_siblings(base, kids, 2, &opts, &report, conflicts, 4));
    CHECK(report.merged && report.conflicts == 1 && report.unresolved_conflicts == 0);
    CHECK(conflicts[0].winner == 1);
    memcpy(ma + 4 * MIB + 1024, mb + 4 * MIB + 1024, 2048);
    memcpy(ma + 7 * MIB, mb + 7 * MIB, 512);
    verify_file(base, ma);
    verify_file(a, ma);
    verify_file(b, ma);
    free(base_model);
    free(ma);
    free(mb);
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    test_change_set(dir);
    test_disjoint(dir);
    test_conflict(dir);
    return finish("test_siblings");
}
