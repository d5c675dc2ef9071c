/*
 * I/O resolution, as a VMM doing its own payload I/O uses it: the library
 * says where the bytes are (vhdx_resolve_read) and makes the space a write
 * needs (vhdx_resolve_write); the test reads and writes the image files
 * itself, through the files vhdx_level_file gives (pread/pwrite on the
 * descriptor; on Windows ReadFile/WriteFile with an offset on the HANDLE),
 * then commits (vhdx_commit_write). Checked against vhdx_read_at and, for
 * the dynamic image, against the raw reference run-tests.sh compares with
 * QEMU. Then four threads write one handle at once (vhdx_write_at into
 * stored and new blocks).
 */
#include "common.h"

#include <pthread.h>

#define MIB (1024u * 1024u)
#define SIZE (16 * MIB)

/* Moves all `len` bytes at `off` of a file vhdx_level_file gave, with
 * positioned I/O (the file's position is the library's business). */
static int file_io(ptrdiff_t file, uint8_t *buf, size_t len, uint64_t off, int write) {
    while (len > 0) {
#if defined(_WIN32)
        OVERLAPPED ov;
        DWORD n = 0;
        DWORD chunk = len > (1u << 30) ? (1u << 30) : (DWORD)len;
        BOOL done;
        memset(&ov, 0, sizeof ov);
        ov.Offset = (DWORD)(off & 0xffffffffu);
        ov.OffsetHigh = (DWORD)(off >> 32);
        done = write ? WriteFile((HANDLE)file, buf, chunk, &n, &ov) : ReadFile((HANDLE)file, buf, chunk, &n, &ov);
        if (!done || n == 0) return 0;
#else
        ssize_t n = write ? pwrite((int)file, buf, len, (off_t)off) : pread((int)file, buf, len, (off_t)off);
        if (n <= 0) return 0;
#endif
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 1;
}

/* The same on chain level `level` of `d`. */
static int level_io(VhdxDisk *d, uint32_t level, uint8_t *buf, size_t len, uint64_t off, int write) {
    ptrdiff_t file = -1;
    return vhdx_level_file(d, level, &file) == VHDX_OK && file_io(file, buf, len, off, write);
}

/* Reads `len` bytes at `off` the way a VMM would: resolve, then read each
 * piece from its level's file (zeros for VHDX_EXTENT_ZERO). */
static int vmm_read(VhdxDisk *d, uint64_t off, uint8_t *buf, size_t len) {
    VhdxIoExtent ext[64];
    size_t count = 0, i;
    if (vhdx_resolve_read(d, off, len, ext, 64, &count) != VHDX_OK || count > 64) return 0;
    for (i = 0; i < count; i++) {
        uint8_t *dst = buf + (ext[i].offset - off);
        if (ext[i].kind == VHDX_EXTENT_ZERO) {
            memset(dst, 0, (size_t)ext[i].length);
        } else if (!level_io(d, ext[i].level, dst, (size_t)ext[i].length, ext[i].file_offset, 0)) {
            return 0;
        }
    }
    return 1;
}

/* Writes `len` bytes at `off` the way a VMM would: resolve, write, commit. */
static int vmm_write(VhdxDisk *d, uint64_t off, const uint8_t *buf, size_t len) {
    VhdxIoExtent ext[64];
    size_t count = 0, i;
    if (vhdx_resolve_write(d, off, len, ext, 64, &count) != VHDX_OK || count > 64) return 0;
    for (i = 0; i < count; i++) {
        if (ext[i].kind != VHDX_EXTENT_FILE || ext[i].level != 0) return 0;
        if (!level_io(d, 0, (uint8_t *)buf + (ext[i].offset - off), (size_t)ext[i].length, ext[i].file_offset, 1))
            return 0;
    }
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
    {
        ptrdiff_t file = -1;
        CHECK_ERR(vhdx_level_file(d, 2, &file), VHDX_ERR_OUT_OF_RANGE, "past the chain");
        CHECK_ERR(vhdx_level_file(d, 0, NULL), VHDX_ERR_INVALID_ARGUMENT, "out");
        CHECK_OK(vhdx_level_file(d, 1, &file));
#if !defined(_WIN32)
        {
            /* Level 1 is the parent's file. */
            struct stat by_fd, by_path;
            CHECK(fstat((int)file, &by_fd) == 0 && stat(base, &by_path) == 0);
            CHECK(by_fd.st_ino == by_path.st_ino && by_fd.st_dev == by_path.st_dev);
        }
#endif
    }
    CHECK_OK(vhdx_resolve_read(d, 4096, 4096, ext, 8, &count));
    CHECK(count == 1 && ext[0].kind == VHDX_EXTENT_FILE && ext[0].level == 1);
    CHECK_ERR(vhdx_resolve_write(d, 4097, 512, ext, 8, &count), VHDX_ERR_INVALID_ARGUMENT, "whole");
    CHECK_OK(vhdx_resolve_write(d, 4096, 8192, ext, 8, &count));
    CHECK(count == 1 && ext[0].kind == VHDX_EXTENT_FILE && ext[0].level == 0);
    fill_pattern(buf, 8192, 4096, 4);
    CHECK(level_io(d, 0, buf, 8192, ext[0].file_offset, 1));
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
