/*
 * I/O resolution, as a VMM doing its own payload I/O uses it: the library
 * says where the bytes are (vhdx_resolve_read) and makes the space a write
 * needs (vhdx_resolve_write); the test reads and writes the image files
 * itself with pread/pwrite, then commits (vhdx_commit_write). Checked
 * against vhdx_read_at and, for the dynamic image, against the raw
 * reference run-tests.sh compares with QEMU. Then four threads write one
 * handle at once (vhdx_write_at into stored and new blocks).
 */
#include "common.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#define MIB (1024u * 1024u)
#define SIZE (16 * MIB)

/* The files of a chain, by level (0 = the handle's own). */
static const char *level_path[3];

/* Reads `len` bytes at `off` the way a VMM would: resolve, then pread each
 * piece from its level's file (zeros for VHDX_EXTENT_ZERO). */
static int vmm_read(VhdxDisk *d, uint64_t off, uint8_t *buf, size_t len) {
    VhdxIoExtent ext[64];
    size_t count = 0, i;
    if (vhdx_resolve_read(d, off, len, ext, 64, &count) != VHDX_OK || count > 64) return 0;
    for (i = 0; i < count; i++) {
        uint8_t *dst = buf + (ext[i].offset - off);
        if (ext[i].kind == VHDX_EXTENT_ZERO) {
            memset(dst, 0, (size_t)ext[i].length);
        } else {
            int fd = open(level_path[ext[i].level], O_RDONLY);
            ssize_t n = fd < 0 ? -1 : pread(fd, dst, (size_t)ext[i].length, (off_t)ext[i].file_offset);
            if (fd >= 0) close(fd);
            if (n != (ssize_t)ext[i].length) return 0;
        }
    }
    return 1;
}

/* Writes `len` bytes at `off` the way a VMM would: resolve, pwrite, commit. */
static int vmm_write(VhdxDisk *d, uint64_t off, const uint8_t *buf, size_t len) {
    VhdxIoExtent ext[64];
    size_t count = 0, i;
    int fd;
    if (vhdx_resolve_write(d, off, len, ext, 64, &count) != VHDX_OK || count > 64) return 0;
    fd = open(level_path[0], O_WRONLY);
    if (fd < 0) return 0;
    for (i = 0; i < count; i++) {
        if (ext[i].kind != VHDX_EXTENT_FILE || ext[i].level != 0) return 0;
        if (pwrite(fd, buf + (ext[i].offset - off), (size_t)ext[i].length, (off_t)ext[i].file_offset) !=
            (ssize_t)ext[i].length)
            return 0;
    }
    close(fd);
    return vhdx_commit_write(d, off, len) == VHDX_OK;
}

static VhdxDisk *shared;

static void *writer(void *arg) {
    unsigned t = (unsigned)(size_t)arg;
    uint8_t buf[8192];
    int i, bad = 0;
    for (i = 0; i < 200 && !bad; i++) {
        /* Thread t owns every 4th 8 KiB slot; slots spread over stored and new blocks. */
        uint64_t off = ((uint64_t)((i * 37) % 500) * 4 + t) * 8192;
        fill_pattern(buf, sizeof buf, off, 40 + t);
        if (vhdx_write_at(shared, off, buf, sizeof buf) != VHDX_OK) bad = 1;
        if (i % 64 == 63 && vhdx_flush(shared) != VHDX_OK) bad = 1;
    }
    return bad ? (void *)1 : NULL;
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    char base[4096], leaf[4096], dyn[4096], expected[4096];
    uint8_t *buf = (uint8_t *)xmalloc(4 * MIB), *back = (uint8_t *)xmalloc(4 * MIB);
    VhdxIoExtent ext[8];
    size_t count = 0;
    VhdxDisk *d, *b;
    pthread_t t[4];
    void *ret;
    unsigned i;

    /* A dynamic disk written the VMM's way across stored and new blocks. */
    path_in(dyn, dir, "c_resolved.vhdx");
    path_in(expected, dir, "c_resolved.expected.raw");
    raw_create(expected, SIZE);
    level_path[0] = dyn;
    CHECK_OK(vhdx_create_dynamic(dyn, SIZE, MIB, 512, &d));
    fill_pattern(buf, MIB, 0, 1);
    CHECK_OK(vhdx_write_at(d, 0, buf, MIB));
    raw_put(expected, 0, buf, MIB);
    CHECK_OK(vhdx_flush(d));
    fill_pattern(buf, 3 * MIB + 1000, MIB - 4096, 2);
    CHECK(vmm_write(d, MIB - 4096, buf, 3 * MIB + 1000));
    raw_put(expected, MIB - 4096, buf, 3 * MIB + 1000);
    CHECK_OK(vhdx_read_at(d, MIB - 4096, back, 3 * MIB + 1000));
    CHECK(has_pattern(back, 3 * MIB + 1000, MIB - 4096, 2));
    /* Resolved reads give what vhdx_read_at gives, zeros included. */
    CHECK(vmm_read(d, 0, back, 4 * MIB));
    CHECK_OK(vhdx_read_at(d, 0, buf, 4 * MIB));
    CHECK(memcmp(back, buf, 4 * MIB) == 0);
    CHECK_OK(vhdx_resolve_read(d, 8 * MIB, MIB, ext, 8, &count));
    CHECK(count == 1 && ext[0].kind == VHDX_EXTENT_ZERO && ext[0].length == MIB);
    /* Too small an array: the count says how many there are. */
    CHECK_OK(vhdx_resolve_read(d, 0, 4 * MIB, NULL, 0, &count));
    CHECK(count >= 1);
    CHECK_ERR(vhdx_resolve_read(d, SIZE - 512, 1024, ext, 8, &count), VHDX_ERR_OUT_OF_RANGE, "");
    CHECK_ERR(vhdx_commit_write(d, 12 * MIB, 512), VHDX_ERR_INVALID_ARGUMENT, "not resolved for writing");

    /* Four threads writing one handle at once. */
    shared = d;
    for (i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, writer, (void *)(size_t)i) == 0);
    for (i = 0; i < 4; i++) {
        CHECK(pthread_join(t[i], &ret) == 0);
        CHECK(ret == NULL);
    }
    for (i = 0; i < 4; i++) {
        int k;
        for (k = 0; k < 200; k++) {
            uint64_t off = ((uint64_t)((k * 37) % 500) * 4 + i) * 8192;
            fill_pattern(buf, 8192, off, 40 + i);
            raw_put(expected, off, buf, 8192);
        }
    }
    for (i = 0; i < 2000; i++) {
        uint64_t off = (uint64_t)i * 8192;
        uint8_t want[8192];
        FILE *f = fopen(expected, "rb");
        CHECK(f != NULL && fseeko(f, (off_t)off, SEEK_SET) == 0 && fread(want, 1, 8192, f) == 8192);
        if (f != NULL) fclose(f);
        CHECK_OK(vhdx_read_at(d, off, back, 8192));
        CHECK(memcmp(back, want, 8192) == 0);
    }
    CHECK_OK(vhdx_close_checked(d));

    /* A differencing child: reads resolve to the parent's file until the
     * child holds the sectors; a resolved write reads as the parent's until
     * it is committed. */
    path_in(base, dir, "c_resolve_base.vhdx");
    path_in(leaf, dir, "c_resolve_leaf.vhdx");
    CHECK_OK(vhdx_create_dynamic(base, SIZE, MIB, 512, &b));
    fill_pattern(buf, 2 * MIB, 0, 3);
    CHECK_OK(vhdx_write_at(b, 0, buf, 2 * MIB));
    CHECK_OK(vhdx_close_checked(b));
    CHECK_OK(vhdx_create_differencing(leaf, base, &d));
    level_path[0] = leaf;
    level_path[1] = base;
    CHECK_OK(vhdx_resolve_read(d, 4096, 4096, ext, 8, &count));
    CHECK(count == 1 && ext[0].kind == VHDX_EXTENT_FILE && ext[0].level == 1);
    CHECK_ERR(vhdx_resolve_write(d, 4097, 512, ext, 8, &count), VHDX_ERR_INVALID_ARGUMENT, "whole");
    CHECK_OK(vhdx_resolve_write(d, 4096, 8192, ext, 8, &count));
    CHECK(count == 1 && ext[0].kind == VHDX_EXTENT_FILE && ext[0].level == 0);
    fill_pattern(buf, 8192, 4096, 4);
    {
        int fd = open(leaf, O_WRONLY);
        CHECK(fd >= 0 && pwrite(fd, buf, 8192, (off_t)ext[0].file_offset) == 8192);
        if (fd >= 0) close(fd);
    }
    CHECK_OK(vhdx_read_at(d, 4096, back, 8192));
    CHECK(has_pattern(back, 8192, 4096, 3));
    CHECK_OK(vhdx_commit_write(d, 4096, 8192));
    CHECK_OK(vhdx_read_at(d, 0, back, 3 * 4096));
    CHECK(has_pattern(back, 4096, 0, 3) && has_pattern(back + 4096, 8192, 4096, 4));
    CHECK(vmm_read(d, 0, back, 2 * MIB + 4096));
    CHECK(has_pattern(back, 4096, 0, 3) && has_pattern(back + 4096, 8192, 4096, 4));
    CHECK(has_pattern(back + 3 * 4096, 2 * MIB - 3 * 4096, 3 * 4096, 3) && all_zero(back + 2 * MIB, 4096));
    CHECK_OK(vhdx_close_checked(d));
    CHECK_OK(vhdx_open(leaf, false, &d));
    CHECK_OK(vhdx_read_at(d, 4096, back, 8192));
    CHECK(has_pattern(back, 8192, 4096, 4));
    vhdx_close(d);
    free(buf);
    free(back);
    return finish("test_resolve");
}
