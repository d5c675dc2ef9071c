/*
 * vhdx2raw - flatten a VHDX image (fixed, dynamic, or a differencing disk
 * with its whole parent chain) into a raw disk image, using libvhdx's C API.
 *
 *   vhdx2raw [--child-only] IMAGE.vhdx OUTPUT.raw
 *
 * The output is sparse: chunks that read as all zeros are not written, and
 * the file is then sized to the virtual disk, so they stay holes. With
 * --child-only a differencing disk is read without its parent (sectors it
 * does not hold read as zeros). OUTPUT must not exist.
 *
 * Build:  cc -std=c99 vhdx2raw.c $(pkg-config --cflags --libs vhdx) -o vhdx2raw
 */
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vhdx.h"

#if defined(_WIN32)
#include <io.h>
#define seek64(f, off) _fseeki64((f), (__int64)(off), SEEK_SET)
#define set_size64(f, size) (_chsize_s(_fileno(f), (__int64)(size)) == 0 ? 0 : -1)
#else
#include <sys/types.h>
#include <unistd.h>
#define seek64(f, off) fseeko((f), (off_t)(off), SEEK_SET)
#define set_size64(f, size) ftruncate(fileno(f), (off_t)(size))
#endif

#define CHUNK (1024u * 1024u)
#define GRAIN 4096u

static int all_zero(const uint8_t *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i] != 0) return 0;
    return 1;
}

static int fail(const char *what) {
    fprintf(stderr, "vhdx2raw: %s: %s\n", what, vhdx_last_error());
    return 1;
}

int main(int argc, char **argv) {
    VhdxOpenOptions options;
    VhdxDisk *disk = NULL;
    const char *in, *out_path;
    FILE *out;
    uint8_t *buf;
    uint64_t size, offset, written = 0;
    int32_t links, i;
    int child_only = 0, rc = 0;

    if (argc == 4 && strcmp(argv[1], "--child-only") == 0) {
        child_only = 1;
        argv++;
        argc--;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: vhdx2raw [--child-only] IMAGE.vhdx OUTPUT.raw\n");
        return 2;
    }
    in = argv[1];
    out_path = argv[2];

    if (vhdx_open_options_init(&options, sizeof options) != VHDX_OK) return fail("options");
    options.without_parent = child_only;
    if (vhdx_open_with(in, &options, &disk) != VHDX_OK) return fail("cannot open the image");
    size = vhdx_virtual_size(disk);
    links = vhdx_chain_length(disk);
    for (i = 0; i < links; i++) {
        char path[4096];
        int32_t n = vhdx_chain_path(disk, (uint32_t)i, path, sizeof path);
        if (n < 0) {
            rc = fail("chain");
            goto close_disk;
        }
        fprintf(stderr, "%s%s\n", i == 0 ? "image:  " : "parent: ", path);
    }

    /* "x": fail if the output exists (C11, and accepted by glibc and MSVC). */
    out = fopen(out_path, "wbx");
    if (out == NULL) {
        fprintf(stderr, "vhdx2raw: cannot create %s (it must not exist)\n", out_path);
        rc = 1;
        goto close_disk;
    }
    buf = (uint8_t *)malloc(CHUNK);
    if (buf == NULL) {
        fprintf(stderr, "vhdx2raw: out of memory\n");
        rc = 1;
        goto close_out;
    }
    for (offset = 0; offset < size; offset += CHUNK) {
        size_t n = size - offset < CHUNK ? (size_t)(size - offset) : CHUNK;
        size_t g;
        if (vhdx_read_at(disk, offset, buf, n) != VHDX_OK) {
            rc = fail("read");
            break;
        }
        /* Write only the grains that hold data. */
        for (g = 0; g < n; g += GRAIN) {
            size_t len = n - g < GRAIN ? n - g : GRAIN;
            if (all_zero(buf + g, len)) continue;
            if (seek64(out, offset + g) != 0 || fwrite(buf + g, 1, len, out) != len) {
                fprintf(stderr, "vhdx2raw: cannot write %s\n", out_path);
                rc = 1;
                break;
            }
            written += len;
        }
        if (rc != 0) break;
    }
    free(buf);
    if (rc == 0 && (fflush(out) != 0 || set_size64(out, size) != 0)) {
        fprintf(stderr, "vhdx2raw: cannot size %s\n", out_path);
        rc = 1;
    }
    if (rc == 0)
        fprintf(stderr, "wrote %llu of %llu bytes (the rest are holes)\n", (unsigned long long)written,
                (unsigned long long)size);
close_out:
    if (fclose(out) != 0) rc = 1;
close_disk:
    vhdx_close(disk);
    return rc;
}
