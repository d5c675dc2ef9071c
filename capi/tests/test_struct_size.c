/*
 * The struct_size rule: a struct whose struct_size is smaller than the
 * library's layout of it (a program built against an older header, or one
 * that never set it) is refused with VHDX_ERR_INVALID_ARGUMENT, a message
 * naming the struct and both sizes, and nothing read, written or done: the
 * caller's bytes stay as they were (checked byte by byte with a guard
 * pattern), no image changes (checked against copies of the files made
 * before the call), no file appears. Structs the library reads refuse a
 * size larger than it knows; structs it fills accept one and write only the
 * fields it knows.
 */
#include <stddef.h>

#include "common.h"

#define MIB (1024u * 1024u)
#define GUARD 0xA5

/* Room for any of the structs and a guard region after it, aligned for
 * each of them. */
union slab {
    uint64_t align_u64;
    void *align_ptr;
    double align_double;
    unsigned char bytes[512];
};

/* The guard pattern everywhere, then `struct_size` in the first 4 bytes. */
static void slab_fill(union slab *s, uint32_t struct_size) {
    memset(s->bytes, GUARD, sizeof s->bytes);
    memcpy(s->bytes, &struct_size, sizeof struct_size);
}

/* Whether struct_size still reads `struct_size` and every byte from `from`
 * to the end of the slab is still the guard. */
static int slab_untouched(const union slab *s, uint32_t struct_size, size_t from) {
    uint32_t now;
    size_t i;
    memcpy(&now, s->bytes, sizeof now);
    if (now != struct_size) return 0;
    for (i = from; i < sizeof s->bytes; i++)
        if (s->bytes[i] != GUARD) return 0;
    return 1;
}

/* The message's words for a refused size: "NAME of GIVEN bytes (its
 * struct_size), smaller than the NEEDED bytes". */
static const char *too_small(char *buf, const char *name, uint32_t given, size_t needed) {
    snprintf(buf, 256, "%s of %u bytes (its struct_size), smaller than the %zu bytes", name, (unsigned)given, needed);
    return buf;
}

/* The same for the size given to an _init function. */
static const char *init_too_small(char *buf, const char *name, uint32_t given, size_t needed) {
    snprintf(buf, 256, "%s of %u bytes (the struct_size argument), smaller than the %zu bytes", name, (unsigned)given,
             needed);
    return buf;
}

static const char *too_large(char *buf, const char *name, uint32_t given, size_t known) {
    snprintf(buf, 256, "%s of %u bytes (its struct_size), larger than the %zu bytes", name, (unsigned)given, known);
    return buf;
}

/* A whole file in memory, to see that a refused call changed nothing. */
struct snapshot {
    unsigned char *data;
    long len;
};

static struct snapshot snap(const char *path) {
    struct snapshot s;
    FILE *f = fopen(path, "rb");
    if (f == NULL || fseek(f, 0, SEEK_END) != 0) FAIL("cannot read %s", path);
    s.len = ftell(f);
    s.data = (unsigned char *)xmalloc((size_t)s.len + 1);
    rewind(f);
    if (fread(s.data, 1, (size_t)s.len, f) != (size_t)s.len) FAIL("cannot read %s", path);
    fclose(f);
    return s;
}

static int same_as(const struct snapshot *s, const char *path) {
    struct snapshot now = snap(path);
    int same = now.len == s->len && memcmp(now.data, s->data, (size_t)s->len) == 0;
    free(now.data);
    return same;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* VhdxOpenOptions as it was before struct_size: what a program built
 * against the old header passes. */
struct old_open_options {
    bool writable;
    bool without_parent;
    VhdxDisk *parent;
    VhdxResolveParentFn resolve_parent;
    void *resolve_user;
    const char *const *parent_search_dirs;
    size_t parent_search_dir_count;
    bool force_share;
};

static void test_open_options(const char *dir) {
    char path[4096], msg[256];
    union slab s;
    struct old_open_options old;
    VhdxDisk *d = NULL;
    const uint32_t small[] = {0, 1, 4, (uint32_t)sizeof(VhdxOpenOptions) - 8};
    size_t i;

    path_in(path, dir, "open.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, 4 * MIB, MIB, 512, &d));
    vhdx_close(d);

    for (i = 0; i < sizeof small / sizeof small[0]; i++) {
        slab_fill(&s, small[i]);
        d = (VhdxDisk *)(void *)&s;
        CHECK_ERR(vhdx_open_with(path, (const VhdxOpenOptions *)(void *)&s, &d), VHDX_ERR_INVALID_ARGUMENT,
                  too_small(msg, "VhdxOpenOptions", small[i], sizeof(VhdxOpenOptions)));
        CHECK(d == NULL);
        CHECK(slab_untouched(&s, small[i], 4));
        CHECK(strstr(vhdx_last_error(), "vhdx_open_with: `options`") != NULL);

        /* The _init function refuses too, writing nothing at all. */
        slab_fill(&s, 0x5A5A5A5Au);
        CHECK_ERR(vhdx_open_options_init((VhdxOpenOptions *)(void *)&s, small[i]), VHDX_ERR_INVALID_ARGUMENT,
                  init_too_small(msg, "VhdxOpenOptions", small[i], sizeof(VhdxOpenOptions)));
        CHECK(slab_untouched(&s, 0x5A5A5A5Au, 4));
    }

    /* An old program's struct: its first bytes are `writable` (true) and
     * `without_parent`, read as a struct_size of 1. */
    memset(&old, 0, sizeof old);
    old.writable = true;
    CHECK_ERR(vhdx_open_with(path, (const VhdxOpenOptions *)(void *)&old, &d), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxOpenOptions", 1, sizeof(VhdxOpenOptions)));
    CHECK(d == NULL);

    /* From a newer header: larger than the library knows, refused rather
     * than the new fields ignored. */
    slab_fill(&s, (uint32_t)sizeof(VhdxOpenOptions) + 8);
    CHECK_ERR(vhdx_open_with(path, (const VhdxOpenOptions *)(void *)&s, &d), VHDX_ERR_INVALID_ARGUMENT,
              too_large(msg, "VhdxOpenOptions", (uint32_t)sizeof(VhdxOpenOptions) + 8, sizeof(VhdxOpenOptions)));
    CHECK_ERR(vhdx_open_options_init((VhdxOpenOptions *)(void *)&s, sizeof(VhdxOpenOptions) + 8),
              VHDX_ERR_INVALID_ARGUMENT, "larger than");

    /* The right size: initialised within it, the guard after it intact. */
    slab_fill(&s, 0);
    CHECK_OK(vhdx_open_options_init((VhdxOpenOptions *)(void *)&s, sizeof(VhdxOpenOptions)));
    CHECK(slab_untouched(&s, (uint32_t)sizeof(VhdxOpenOptions), sizeof(VhdxOpenOptions)));
    CHECK(!((VhdxOpenOptions *)(void *)&s)->writable);
    ((VhdxOpenOptions *)(void *)&s)->writable = true;
    CHECK_OK(vhdx_open_with(path, (const VhdxOpenOptions *)(void *)&s, &d));
    CHECK(slab_untouched(&s, (uint32_t)sizeof(VhdxOpenOptions), sizeof(VhdxOpenOptions)));
    vhdx_close(d);
}

static void test_info(const char *dir) {
    char path[4096], msg[256];
    union slab s;
    VhdxDisk *d = NULL;
    VhdxInfo *info = (VhdxInfo *)(void *)&s;
    /* 0 (never set), the old layout's first field (a disk type), and an
     * older, shorter VhdxInfo (without the last GUID). */
    const uint32_t small[] = {0, VHDX_DISK_TYPE_DYNAMIC, (uint32_t)sizeof(VhdxInfo) - 16};
    size_t i;

    path_in(path, dir, "info.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, 4 * MIB, MIB, 512, &d));
    for (i = 0; i < sizeof small / sizeof small[0]; i++) {
        slab_fill(&s, small[i]);
        CHECK_ERR(vhdx_info(d, info), VHDX_ERR_INVALID_ARGUMENT,
                  too_small(msg, "VhdxInfo", small[i], sizeof(VhdxInfo)));
        CHECK(strstr(vhdx_last_error(), "vhdx_info: `info`") != NULL);
        CHECK(slab_untouched(&s, small[i], 4));
    }

    /* The right size: filled up to it, nothing after it. */
    slab_fill(&s, (uint32_t)sizeof(VhdxInfo));
    CHECK_OK(vhdx_info(d, info));
    CHECK(slab_untouched(&s, (uint32_t)sizeof(VhdxInfo), sizeof(VhdxInfo)));
    CHECK(info->virtual_size == 4 * MIB && info->block_size == MIB && info->disk_type == VHDX_DISK_TYPE_DYNAMIC);
    CHECK(info->writable && info->chain_length == 1 && !info->has_parent_linkage);

    /* A newer program's larger VhdxInfo: the fields this library knows are
     * filled, the newer ones keep what the program put there. */
    slab_fill(&s, (uint32_t)sizeof(VhdxInfo) + 32);
    CHECK_OK(vhdx_info(d, info));
    CHECK(slab_untouched(&s, (uint32_t)sizeof(VhdxInfo) + 32, sizeof(VhdxInfo)));
    CHECK(info->virtual_size == 4 * MIB && info->logical_sector_size == 512);
    vhdx_close(d);
}

static void test_convert(const char *dir) {
    char src[4096], dst[4096], msg[256];
    union slab s, r;
    VhdxDisk *d = NULL;
    VhdxConvertOptions options;
    VhdxConvertReport report = {.struct_size = sizeof report};
    uint8_t buf[4096];

    path_in(src, dir, "convert_src.vhdx");
    path_in(dst, dir, "convert_dst.vhdx");
    CHECK_OK(vhdx_create_dynamic(src, 4 * MIB, MIB, 512, &d));
    fill_pattern(buf, sizeof buf, MIB, 3);
    CHECK_OK(vhdx_write_at(d, MIB, buf, sizeof buf));
    vhdx_close(d);

    /* Options too small: refused before anything is read or written. The
     * struct grew (azure, parent_path): its first layout, up to the
     * padding before `azure`, is the smallest accepted, and a size between
     * two layouts (part of the pointer) is refused. */
    const uint32_t first = (uint32_t)offsetof(VhdxConvertOptions, azure);
    CHECK(first == 32 && sizeof(VhdxConvertOptions) == 48);
    slab_fill(&s, first - 4);
    CHECK_ERR(vhdx_convert(src, dst, (const VhdxConvertOptions *)(void *)&s, NULL), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxConvertOptions", first - 4, first));
    CHECK(slab_untouched(&s, first - 4, 4));
    CHECK(!exists(dst));
    slab_fill(&s, 0);
    CHECK_ERR(vhdx_convert(src, dst, (const VhdxConvertOptions *)(void *)&s, NULL), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxConvertOptions", 0, first));
    CHECK(!exists(dst));
    slab_fill(&s, 0x5A5A5A5Au);
    CHECK_ERR(vhdx_convert_options_init((VhdxConvertOptions *)(void *)&s, 8), VHDX_ERR_INVALID_ARGUMENT,
              init_too_small(msg, "VhdxConvertOptions", 8, first));
    CHECK(slab_untouched(&s, 0x5A5A5A5Au, 4));
    CHECK_ERR(vhdx_convert_options_init(&options, 44), VHDX_ERR_INVALID_ARGUMENT, "none of its layouts");
    options.struct_size = 44;
    CHECK_ERR(vhdx_convert(src, dst, &options, NULL), VHDX_ERR_INVALID_ARGUMENT, "none of its layouts");
    CHECK(!exists(dst));
    /* A client built against the first layout: the later fields default. */
    memset(&options, 0x7F, sizeof options);
    CHECK_OK(vhdx_convert_options_init(&options, first));
    CHECK(options.struct_size == first);
    CHECK(((uint8_t *)&options)[first] == 0x7F); /* nothing past its size written */
    CHECK_OK(vhdx_convert(src, dst, &options, NULL));
    CHECK(exists(dst));
    CHECK(remove(dst) == 0);

    /* Good options, a report too small: refused before converting (a report
     * that could not be written must not hide a conversion that happened). */
    CHECK_OK(vhdx_convert_options_init(&options, sizeof options));
    slab_fill(&r, 8);
    CHECK_ERR(vhdx_convert(src, dst, &options, (VhdxConvertReport *)(void *)&r), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxConvertReport", 8, sizeof(VhdxConvertReport)));
    CHECK(slab_untouched(&r, 8, 4));
    CHECK(!exists(dst));

    /* And with both right, it converts. */
    CHECK_OK(vhdx_convert(src, dst, &options, &report));
    CHECK(report.struct_size == sizeof report && report.virtual_size == 4 * MIB);
    CHECK(exists(dst));
}

static void test_merge(const char *dir) {
    char base[4096], child[4096], msg[256];
    union slab s, r;
    VhdxDisk *d = NULL;
    VhdxMergeOptions options;
    VhdxMergeReport report = {.struct_size = sizeof report};
    struct snapshot base_before, child_before;
    uint8_t buf[4096];

    path_in(base, dir, "merge_base.vhdx");
    path_in(child, dir, "merge_child.vhdx");
    CHECK_OK(vhdx_create_dynamic(base, 4 * MIB, MIB, 512, &d));
    vhdx_close(d);
    CHECK_OK(vhdx_create_differencing(child, base, &d));
    fill_pattern(buf, sizeof buf, 2 * MIB, 4);
    CHECK_OK(vhdx_write_at(d, 2 * MIB, buf, sizeof buf));
    vhdx_close(d);
    base_before = snap(base);
    child_before = snap(child);

    slab_fill(&s, (uint32_t)sizeof(VhdxMergeOptions) - 8);
    CHECK_ERR(vhdx_merge_with(child, (const VhdxMergeOptions *)(void *)&s, NULL), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxMergeOptions", (uint32_t)sizeof(VhdxMergeOptions) - 8, sizeof(VhdxMergeOptions)));
    CHECK(slab_untouched(&s, (uint32_t)sizeof(VhdxMergeOptions) - 8, 4));
    /* An old program's VhdxMergeOptions began with `depth` (1). */
    slab_fill(&s, 1);
    CHECK_ERR(vhdx_merge_with(child, (const VhdxMergeOptions *)(void *)&s, NULL), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxMergeOptions", 1, sizeof(VhdxMergeOptions)));
    slab_fill(&s, 0x5A5A5A5Au);
    CHECK_ERR(vhdx_merge_options_init((VhdxMergeOptions *)(void *)&s, 0), VHDX_ERR_INVALID_ARGUMENT,
              init_too_small(msg, "VhdxMergeOptions", 0, sizeof(VhdxMergeOptions)));
    CHECK(slab_untouched(&s, 0x5A5A5A5Au, 4));

    /* Good options, a report too small: refused before merging. */
    CHECK_OK(vhdx_merge_options_init(&options, sizeof options));
    slab_fill(&r, 0);
    CHECK_ERR(vhdx_merge_with(child, &options, (VhdxMergeReport *)(void *)&r), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxMergeReport", 0, sizeof(VhdxMergeReport)));
    CHECK(slab_untouched(&r, 0, 4));
    CHECK(same_as(&base_before, base));
    CHECK(same_as(&child_before, child));

    /* With both right, the merge changes the base (so the checks above
     * would have seen one). */
    CHECK_OK(vhdx_merge_with(child, &options, &report));
    CHECK(report.struct_size == sizeof report && report.images_merged == 1 && report.bytes_merged >= sizeof buf);
    CHECK(!same_as(&base_before, base));
    free(base_before.data);
    free(child_before.data);
}

static int calls;
static int32_t count_read(void *user, uint64_t offset, void *buf, size_t len) {
    (void)user, (void)offset, (void)buf, (void)len;
    calls++;
    return -1;
}
static int32_t count_size(void *user, uint64_t *size) {
    (void)user;
    calls++;
    *size = 0;
    return 0;
}
static void count_destroy(void *user) {
    (void)user;
    calls++;
}

static void test_others(const char *dir) {
    char path[4096], msg[256];
    const char *kids[1];
    union slab s;
    VhdxStorageCallbacks cb;
    VhdxDisk *d = NULL;

    /* Callbacks: none is called, not even destroy (the library read no
     * field of the table). */
    memset(&cb, 0, sizeof cb);
    cb.struct_size = sizeof cb - 8;
    cb.read = count_read;
    cb.size = count_size;
    cb.destroy = count_destroy;
    calls = 0;
    CHECK_ERR(vhdx_create_dynamic_callbacks(&cb, 4 * MIB, 0, 0, &d), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxStorageCallbacks", (uint32_t)sizeof cb - 8, sizeof cb));
    CHECK(d == NULL && calls == 0);
    cb.struct_size = 0;
    CHECK_ERR(vhdx_open_callbacks(&cb, "mem", NULL, &d), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxStorageCallbacks", 0, sizeof cb));
    CHECK(d == NULL && calls == 0);

    /* Compact's report: refused before compacting. */
    path_in(path, dir, "compact.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, 4 * MIB, MIB, 512, &d));
    slab_fill(&s, 16);
    CHECK_ERR(vhdx_compact(d, (VhdxCompactReport *)(void *)&s), VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxCompactReport", 16, sizeof(VhdxCompactReport)));
    CHECK(slab_untouched(&s, 16, 4));
    vhdx_close(d);

    /* The sibling merge's options and report. */
    kids[0] = path;
    slab_fill(&s, 4);
    CHECK_ERR(vhdx_merge_siblings(path, kids, 1, (const VhdxSiblingMergeOptions *)(void *)&s, NULL, NULL, 0),
              VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxSiblingMergeOptions", 4, sizeof(VhdxSiblingMergeOptions)));
    CHECK(slab_untouched(&s, 4, 4));
    slab_fill(&s, 4);
    CHECK_ERR(vhdx_merge_siblings(path, kids, 1, NULL, (VhdxSiblingMergeReport *)(void *)&s, NULL, 0),
              VHDX_ERR_INVALID_ARGUMENT,
              too_small(msg, "VhdxSiblingMergeReport", 4, sizeof(VhdxSiblingMergeReport)));
    CHECK(slab_untouched(&s, 4, 4));
    slab_fill(&s, 0x5A5A5A5Au);
    CHECK_ERR(vhdx_sibling_merge_options_init((VhdxSiblingMergeOptions *)(void *)&s, 3), VHDX_ERR_INVALID_ARGUMENT,
              init_too_small(msg, "VhdxSiblingMergeOptions", 3, sizeof(VhdxSiblingMergeOptions)));
    CHECK(slab_untouched(&s, 0x5A5A5A5Au, 4));
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    test_open_options(dir);
    test_info(dir);
    test_convert(dir);
    test_merge(dir);
    test_others(dir);
    return finish("test_struct_size");
}
