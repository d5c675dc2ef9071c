/*
 * Caller-supplied storage: images kept in a C memory buffer through
 * VhdxStorageCallbacks — create, write, read, reopen, a chain made only of
 * callback storage, failing and missing callbacks, and destroy called
 * exactly once every time.
 *
 * Leaves WORK_DIR/c_callbacks.vhdx (the buffer, saved) for run-tests.sh to
 * check with qemu-img.
 */
#include "common.h"

#define MIB (1024u * 1024u)

struct mem {
    uint8_t *data;
    size_t len;
    int destroyed;
    int flushes;
    int fail_reads;
};

static int32_t mem_read(void *user, uint64_t offset, void *buf, size_t len) {
    struct mem *m = (struct mem *)user;
    if (m->fail_reads) return -42;
    if (offset > m->len || len > m->len - offset) return -1;
    memcpy(buf, m->data + offset, len);
    return 0;
}

static int32_t mem_set_size(void *user, uint64_t size) {
    struct mem *m = (struct mem *)user;
    uint8_t *p;
    if (size > (uint64_t)1 << 32) return -1;
    p = (uint8_t *)realloc(m->data, size == 0 ? 1 : (size_t)size);
    if (p == NULL) return -1;
    if (size > m->len) memset(p + m->len, 0, (size_t)size - m->len);
    m->data = p;
    m->len = (size_t)size;
    return 0;
}

static int32_t mem_write(void *user, uint64_t offset, const void *buf, size_t len) {
    struct mem *m = (struct mem *)user;
    if (offset + len > m->len && mem_set_size(user, offset + len) != 0) return -1;
    memcpy(m->data + offset, buf, len);
    return 0;
}

static int32_t mem_flush(void *user) {
    ((struct mem *)user)->flushes++;
    return 0;
}

static int32_t mem_size(void *user, uint64_t *size) {
    *size = ((struct mem *)user)->len;
    return 0;
}

static void mem_destroy(void *user) {
    ((struct mem *)user)->destroyed++;
}

static VhdxStorageCallbacks callbacks_for(struct mem *m) {
    VhdxStorageCallbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.struct_size = sizeof cb;
    cb.user = m;
    cb.read = mem_read;
    cb.write = mem_write;
    cb.flush = mem_flush;
    cb.size = mem_size;
    cb.set_size = mem_set_size;
    cb.destroy = mem_destroy;
    return cb;
}

static void save(const struct mem *m, const char *path) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(m->data, 1, m->len, f) == m->len);
    fclose(f);
}

static void load(struct mem *m, const char *path) {
    FILE *f = fopen(path, "rb");
    long n;
    CHECK(f != NULL);
    CHECK(fseek(f, 0, SEEK_END) == 0);
    n = ftell(f);
    CHECK(n > 0);
    CHECK(fseek(f, 0, SEEK_SET) == 0);
    memset(m, 0, sizeof *m);
    m->data = (uint8_t *)xmalloc((size_t)n);
    m->len = (size_t)n;
    CHECK(fread(m->data, 1, m->len, f) == m->len);
    fclose(f);
}

static void test_memory_image(const char *dir) {
    struct mem m;
    VhdxStorageCallbacks cb;
    VhdxDisk *d = NULL;
    VhdxOpenOptions oo;
    VhdxInfo info = {.struct_size = sizeof info};
    uint8_t *buf = (uint8_t *)xmalloc(MIB);
    char path[4096], got[64];

    memset(&m, 0, sizeof m);
    cb = callbacks_for(&m);
    CHECK_OK(vhdx_create_dynamic_callbacks(&cb, 32 * MIB, MIB, 512, &d));
    CHECK(m.len > 0);
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_DYNAMIC);
    fill_pattern(buf, MIB, 3 * MIB + 17, 1);
    CHECK_OK(vhdx_write_at(d, 3 * MIB + 17, buf, MIB));
    fill_pattern(buf, 512, 31 * MIB, 2);
    CHECK_OK(vhdx_write_at(d, 31 * MIB, buf, 512));
    CHECK_OK(vhdx_flush(d));
    CHECK(m.flushes > 0);
    CHECK_OK(vhdx_read_at(d, 3 * MIB + 17, buf, MIB));
    CHECK(has_pattern(buf, MIB, 3 * MIB + 17, 1));
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.file_size == m.len);
    CHECK(info.allocated_blocks == 3);
    /* No name was given: the chain path is "?". */
    CHECK(vhdx_chain_path(d, 0, got, sizeof got) == 1 && strcmp(got, "?") == 0);
    CHECK(m.destroyed == 0);
    CHECK_OK(vhdx_close_checked(d));
    CHECK(m.destroyed == 1);

    /* Reopen the buffer, read-only by default, with a name for messages. */
    cb = callbacks_for(&m);
    CHECK_OK(vhdx_open_callbacks(&cb, "mem.vhdx", NULL, &d));
    CHECK_OK(vhdx_read_at(d, 31 * MIB, buf, 512));
    CHECK(has_pattern(buf, 512, 31 * MIB, 2));
    CHECK_ERR(vhdx_write_at(d, 0, buf, 512), VHDX_ERR_READ_ONLY, "mem.vhdx");
    CHECK_ERR(vhdx_read_at(d, 32 * MIB, buf, 1), VHDX_ERR_OUT_OF_RANGE, "mem.vhdx");
    CHECK(vhdx_chain_path(d, 0, got, sizeof got) == 8 && strcmp(got, "mem.vhdx") == 0);
    vhdx_close(d);
    CHECK(m.destroyed == 2);

    /* Writable, through options. */
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    oo.writable = true;
    CHECK_OK(vhdx_open_callbacks(&cb, "mem.vhdx", &oo, &d));
    fill_pattern(buf, 4096, 0, 3);
    CHECK_OK(vhdx_write_at(d, 0, buf, 4096));
    vhdx_close(d);
    CHECK(m.destroyed == 3);

    /* The buffer is a real image: saved to a file, it opens as one. */
    path_in(path, dir, "c_callbacks.vhdx");
    save(&m, path);
    CHECK_OK(vhdx_open(path, false, &d));
    CHECK_OK(vhdx_read_at(d, 0, buf, 4096));
    CHECK(has_pattern(buf, 4096, 0, 3));
    CHECK_OK(vhdx_read_at(d, 3 * MIB + 17, buf, MIB));
    CHECK(has_pattern(buf, MIB, 3 * MIB + 17, 1));
    vhdx_close(d);
    CHECK(vhdx_check(path, NULL, 0) == 0);

    /* A failing read callback: VHDX_ERR_IO naming the image; still destroyed once. */
    m.fail_reads = 1;
    CHECK_ERR(vhdx_open_callbacks(&cb, "mem.vhdx", NULL, &d), VHDX_ERR_IO, "mem.vhdx");
    CHECK(strstr(vhdx_last_error(), "read callback") != NULL);
    CHECK(strstr(vhdx_last_error(), "-42") != NULL);
    CHECK(d == NULL);
    CHECK(m.destroyed == 4);
    m.fail_reads = 0;

    /* Missing callbacks: refused, and destroy still runs. */
    cb.read = NULL;
    CHECK_ERR(vhdx_open_callbacks(&cb, NULL, NULL, &d), VHDX_ERR_INVALID_ARGUMENT, "`read` callback is NULL");
    CHECK(m.destroyed == 5);
    cb = callbacks_for(&m);
    cb.write = NULL;
    CHECK_OK(vhdx_open_callbacks(&cb, NULL, NULL, &d)); /* read-only needs no write */
    vhdx_close(d);
    CHECK(m.destroyed == 6);
    CHECK_ERR(vhdx_open_callbacks(&cb, NULL, &oo, &d), VHDX_ERR_INVALID_ARGUMENT, "`write` callback is NULL");
    CHECK(m.destroyed == 7);
    cb = callbacks_for(&m);
    cb.set_size = NULL;
    CHECK_ERR(vhdx_create_dynamic_callbacks(&cb, MIB, 0, 0, &d), VHDX_ERR_INVALID_ARGUMENT, "`set_size`");
    CHECK(m.destroyed == 8);
    /* Without destroy, nothing is called back. */
    cb = callbacks_for(&m);
    cb.destroy = NULL;
    CHECK_OK(vhdx_open_callbacks(&cb, NULL, NULL, &d));
    vhdx_close(d);
    CHECK(m.destroyed == 8);

    free(m.data);
    free(buf);
}

static void test_fixed_and_bad_parameters(void) {
    struct mem m;
    VhdxStorageCallbacks cb;
    VhdxDisk *d = NULL;

    memset(&m, 0, sizeof m);
    cb = callbacks_for(&m);
    CHECK_OK(vhdx_create_fixed_callbacks(&cb, 4 * MIB, MIB, 4096, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_FIXED);
    CHECK(vhdx_logical_sector_size(d) == 4096);
    CHECK(m.len >= 4 * MIB);
    vhdx_close(d);
    CHECK(m.destroyed == 1);
    free(m.data);

    memset(&m, 0, sizeof m);
    cb = callbacks_for(&m);
    CHECK_ERR(vhdx_create_dynamic_callbacks(&cb, 4 * MIB, 5 * MIB, 512, &d), VHDX_ERR_INVALID_ARGUMENT, "block size");
    CHECK(m.destroyed == 1);
    CHECK_ERR(vhdx_create_dynamic_callbacks(&cb, 4 * MIB, 0, 0, NULL), VHDX_ERR_INVALID_ARGUMENT, "`out` is NULL");
    CHECK(m.destroyed == 2);
    free(m.data);
}

/* A differencing chain held entirely in callback storage: the parent is
 * opened first and handed to the child's open. */
static void test_chain_in_memory(const char *dir) {
    char base[4096], child[4096];
    struct mem mb, mc;
    VhdxStorageCallbacks cbb, cbc;
    VhdxDisk *d = NULL, *parent = NULL;
    VhdxOpenOptions oo;
    uint8_t buf[8192];

    path_in(base, dir, "cb_base.vhdx");
    path_in(child, dir, "cb_child.vhdx");
    CHECK_OK(vhdx_create_dynamic(base, 8 * MIB, MIB, 512, &d));
    fill_pattern(buf, sizeof buf, 0, 20);
    CHECK_OK(vhdx_write_at(d, 0, buf, sizeof buf));
    vhdx_close(d);
    CHECK_OK(vhdx_create_differencing(child, base, &d));
    fill_pattern(buf, 100, 4096, 21);
    CHECK_OK(vhdx_write_at(d, 4096, buf, 100));
    vhdx_close(d);
    load(&mb, base);
    load(&mc, child);

    cbb = callbacks_for(&mb);
    cbc = callbacks_for(&mc);
    CHECK_OK(vhdx_open_callbacks(&cbb, "memory base", NULL, &parent));
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    oo.parent = parent;
    CHECK_OK(vhdx_open_callbacks(&cbc, "memory child", &oo, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_DIFFERENCING);
    CHECK(vhdx_chain_length(d) == 2);
    CHECK_OK(vhdx_read_at(d, 0, buf, sizeof buf));
    CHECK(has_pattern(buf, 4096, 0, 20));
    CHECK(has_pattern(buf + 4096, 100, 4096, 21));
    CHECK(has_pattern(buf + 4196, sizeof buf - 4196, 4196, 20));
    vhdx_close(d);
    CHECK(mb.destroyed == 1 && mc.destroyed == 1);

    /* Without a parent handle, the locator's paths are followed; with the
     * base file gone, nothing is found. */
    cbc = callbacks_for(&mc);
    CHECK_OK(vhdx_open_callbacks(&cbc, "memory child", NULL, &d));
    CHECK(vhdx_chain_length(d) == 2);
    vhdx_close(d);
    CHECK(mc.destroyed == 1 + 1);
    CHECK(remove(base) == 0);
    CHECK_ERR(vhdx_open_callbacks(&cbc, "memory child", NULL, &d), VHDX_ERR_PARENT_NOT_FOUND, "memory child");
    CHECK(mc.destroyed == 3);
    free(mb.data);
    free(mc.data);
}

/* A raw image in a C buffer poured into a new dynamic VHDX file with
 * vhdx_import_raw: only its blocks with data are allocated, the bytes read
 * back are the buffer's, and `destroy` runs once whatever the outcome. The
 * buffer is saved as c_import.expected.raw and the image as c_import.vhdx,
 * for run-tests.sh to compare with qemu-img. */
static void test_import_raw(const char *dir) {
    struct mem m;
    VhdxStorageCallbacks cb;
    VhdxDisk *d = NULL;
    VhdxInfo info = {.struct_size = sizeof info};
    uint64_t written = 0;
    uint8_t *buf = (uint8_t *)xmalloc(MIB);
    char path[4096], raw[4096];

    memset(&m, 0, sizeof m);
    m.len = 16 * MIB;
    m.data = (uint8_t *)calloc(1, m.len);
    CHECK(m.data != NULL);
    fill_pattern(m.data + 2 * MIB + 100, 3000, 2 * MIB + 100, 4);
    fill_pattern(m.data + 15 * MIB, MIB, 15 * MIB, 5);
    path_in(raw, dir, "c_import.expected.raw");
    save(&m, raw);

    path_in(path, dir, "c_import.vhdx");
    remove(path);
    CHECK_OK(vhdx_create_dynamic(path, 16 * MIB, MIB, 512, &d));
    cb = callbacks_for(&m);
    cb.write = NULL; /* read and size are all it needs */
    cb.set_size = NULL;
    CHECK_OK(vhdx_import_raw(&cb, d, &written));
    CHECK(m.destroyed == 1);
    CHECK(written == 4096 + MIB); /* one 4 KiB grain, then the whole last MiB */
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.allocated_blocks == 2);
    CHECK_OK(vhdx_read_at(d, 2 * MIB, buf, MIB));
    CHECK(memcmp(buf, m.data + 2 * MIB, MIB) == 0);
    CHECK_OK(vhdx_close_checked(d));

    /* A source whose size differs from the disk's: refused, still destroyed. */
    CHECK_OK(vhdx_open(path, true, &d));
    m.len = 8 * MIB;
    cb = callbacks_for(&m);
    CHECK_ERR(vhdx_import_raw(&cb, d, NULL), VHDX_ERR_INVALID_ARGUMENT, "bytes");
    CHECK(m.destroyed == 2);
    /* A read-only handle refuses the copy. */
    vhdx_close(d);
    CHECK_OK(vhdx_open(path, false, &d));
    m.len = 16 * MIB;
    cb = callbacks_for(&m);
    CHECK(vhdx_import_raw(&cb, d, NULL) == VHDX_ERR_READ_ONLY);
    CHECK(m.destroyed == 3);
    /* NULL arguments. */
    cb = callbacks_for(&m);
    CHECK(vhdx_import_raw(&cb, NULL, NULL) == VHDX_ERR_INVALID_ARGUMENT);
    CHECK(m.destroyed == 4);
    CHECK(vhdx_import_raw(NULL, d, NULL) == VHDX_ERR_INVALID_ARGUMENT);
    vhdx_close(d);
    free(m.data);
    free(buf);
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    test_memory_image(dir);
    test_fixed_and_bad_parameters();
    test_chain_in_memory(dir);
    test_import_raw(dir);
    return finish("test_callbacks");
}
