/*
 * Helpers shared by the C tests of libvhdx: checks that print the library's
 * last error, paths inside the test's work directory, and data patterns.
 *
 * Every test program takes one argument, an existing empty directory to work
 * in, and exits 0 when every check passed.
 */
#ifndef VHDX_TEST_COMMON_H
#define VHDX_TEST_COMMON_H

/* The tests use POSIX (mkdir, truncate, pthreads) beside C99; the
 * header itself needs neither. On Windows (mingw-w64, which CI's
 * .ci/windows builds them with) the few calls POSIX has and Windows lacks
 * are defined below from Windows' own: each does what POSIX says. */
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif

#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <fcntl.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#include <direct.h>
#include <io.h>
#include <windows.h>

/* mkdir without a mode. (fseeko and ftello are mingw's own, 64-bit with
 * _FILE_OFFSET_BITS=64, which .ci/windows sets.) */
#define mkdir(path, mode) _mkdir(path)

/* Sizes the file `path`, as truncate(2) does. */
static inline int set_file_size(const char *path, uint64_t size) {
    int fd = _open(path, _O_RDWR | _O_BINARY);
    int rc;
    if (fd < 0) return -1;
    rc = _chsize_s(fd, (__int64)size) == 0 ? 0 : -1;
    _close(fd);
    return rc;
}

#else
static inline int set_file_size(const char *path, uint64_t size) {
    return truncate(path, (off_t)size);
}
#endif


#include "vhdx.h"

static int checks_run = 0;

#define FAIL(...)                                                                   \
    do {                                                                            \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                             \
        fprintf(stderr, __VA_ARGS__);                                               \
        fprintf(stderr, "\n  vhdx_last_error(): %s\n", vhdx_last_error());          \
        exit(1);                                                                    \
    } while (0)

/* A condition that must hold. */
#define CHECK(cond)                                                                 \
    do {                                                                            \
        checks_run++;                                                               \
        if (!(cond)) FAIL("check failed: %s", #cond);                               \
    } while (0)

/* A call that must return VHDX_OK. */
#define CHECK_OK(call)                                                              \
    do {                                                                            \
        int32_t rc_ = (call);                                                       \
        checks_run++;                                                               \
        if (rc_ != VHDX_OK) FAIL("%s returned %d, expected VHDX_OK", #call, (int)rc_); \
    } while (0)

/* A call that must fail with `status`, leaving a last error that contains
 * `needle` (the file's name, or the argument's). */
#define CHECK_ERR(call, status, needle)                                             \
    do {                                                                            \
        int32_t rc_ = (call);                                                       \
        checks_run++;                                                               \
        if (rc_ != (status)) FAIL("%s returned %d, expected %s (%d)", #call, (int)rc_, #status, (int)(status)); \
        if (strstr(vhdx_last_error(), (needle)) == NULL)                            \
            FAIL("the last error of %s does not mention \"%s\"", #call, (needle));  \
        if (getenv("VHDX_TEST_VERBOSE") != NULL)                                    \
            printf("  %s -> %d: %s\n", #call, (int)rc_, vhdx_last_error());          \
    } while (0)

/* `dir`/`name` into `buf` (4096 bytes). */
static inline const char *path_in(char *buf, const char *dir, const char *name) {
    int n = snprintf(buf, 4096, "%s/%s", dir, name);
    if (n < 0 || n >= 4096) {
        fprintf(stderr, "path too long: %s/%s\n", dir, name);
        exit(1);
    }
    return buf;
}

/* A byte pattern that differs per offset and per seed. */
static inline void fill_pattern(uint8_t *buf, size_t len, uint64_t offset, unsigned seed) {
    size_t i;
    for (i = 0; i < len; i++) {
        uint64_t x = (offset + i) * 2654435761u + seed * 97u;
        buf[i] = (uint8_t)(x ^ (x >> 13) ^ seed);
    }
}

/* Whether `buf` holds the pattern of `offset` and `seed`. */
static inline int has_pattern(const uint8_t *buf, size_t len, uint64_t offset, unsigned seed) {
    size_t i;
    for (i = 0; i < len; i++) {
        uint64_t x = (offset + i) * 2654435761u + seed * 97u;
        if (buf[i] != (uint8_t)(x ^ (x >> 13) ^ seed)) return 0;
    }
    return 1;
}

static inline int all_zero(const uint8_t *buf, size_t len) {
    size_t i;
    for (i = 0; i < len; i++)
        if (buf[i] != 0) return 0;
    return 1;
}

static inline void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* Copies `from` to `to` (whole files; for making test variants). */
static inline void copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    FILE *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    if (in == NULL || out == NULL) {
        fprintf(stderr, "cannot copy %s to %s\n", from, to);
        exit(1);
    }
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
        if (fwrite(buf, 1, n, out) != n) {
            fprintf(stderr, "cannot write %s\n", to);
            exit(1);
        }
    }
    fclose(in);
    fclose(out);
}

static inline void make_dir(const char *path) {
    if (mkdir(path, 0755) != 0) {
        fprintf(stderr, "cannot create the directory %s\n", path);
        exit(1);
    }
}

/* Raw reference files: what a test wrote, kept by the test itself beside the
 * image (NAME.expected.raw), so run-tests.sh can compare what tools read
 * out of the image with what went in, not with another read through the
 * same library. */

/* Creates `path` as `size` bytes of zeros (a sparse file). */
static inline void raw_create(const char *path, uint64_t size) {
    FILE *f = fopen(path, "wb");
    if (f == NULL || fclose(f) != 0 || set_file_size(path, size) != 0) {
        fprintf(stderr, "cannot create the raw reference %s\n", path);
        exit(1);
    }
}

/* Writes `len` bytes at `offset` of the raw reference `path`. */
static inline void raw_put(const char *path, uint64_t offset, const uint8_t *buf, size_t len) {
    FILE *f = fopen(path, "r+b");
    if (f == NULL || fseeko(f, (off_t)offset, SEEK_SET) != 0 || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "cannot write the raw reference %s\n", path);
        exit(1);
    }
}

static inline const char *work_dir(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s WORK_DIR\n", argv[0]);
        exit(2);
    }
    return argv[1];
}

static inline int finish(const char *name) {
    printf("%s: %d checks passed\n", name, checks_run);
    return 0;
}

#endif
