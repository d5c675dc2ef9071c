/*
 * Threads: one handle shared by reader threads and a writer thread (the
 * handle's lock makes that safe), and vhdx_last_error() kept per thread.
 * Uses POSIX threads; the library itself needs none from the caller.
 */
#include "common.h"

#include <pthread.h>

#define MIB (1024u * 1024u)
#define READERS 4
#define ROUNDS 200

static VhdxDisk *shared;
/* [0, 8 MiB) is written before the threads start and never changes. */
#define STABLE (8 * MIB)

static void *reader(void *arg) {
    unsigned seed = (unsigned)(size_t)arg * 7919u + 1;
    uint8_t *buf = (uint8_t *)xmalloc(65536);
    int i, bad = 0;
    for (i = 0; i < ROUNDS && !bad; i++) {
        uint64_t off, len;
        seed = seed * 1103515245u + 12345u;
        off = (seed >> 4) % (STABLE - 65536);
        len = 1 + (seed >> 8) % 65536;
        if (vhdx_read_at(shared, off, buf, (size_t)len) != VHDX_OK || !has_pattern(buf, (size_t)len, off, 1)) bad = 1;
    }
    free(buf);
    return bad ? (void *)1 : NULL;
}

static void *writer(void *arg) {
    uint8_t buf[4096];
    int i, bad = 0;
    (void)arg;
    for (i = 0; i < ROUNDS && !bad; i++) {
        uint64_t off = STABLE + (uint64_t)i * 20000;
        fill_pattern(buf, sizeof buf, off, 2);
        if (vhdx_write_at(shared, off, buf, sizeof buf) != VHDX_OK) bad = 1;
        if (i % 50 == 0 && vhdx_flush(shared) != VHDX_OK) bad = 1;
    }
    return bad ? (void *)1 : NULL;
}

/* Fails a call on this thread and checks the message stays this thread's. */
static void *failer(void *arg) {
    const char *name = (const char *)arg;
    VhdxDisk *d = NULL;
    int i, bad = 0;
    for (i = 0; i < 100 && !bad; i++) {
        if (vhdx_open(name, false, &d) != VHDX_ERR_IO) bad = 1;
        if (strstr(vhdx_last_error(), name) == NULL) bad = 1;
    }
    return bad ? (void *)1 : NULL;
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    char path[4096];
    pthread_t t[READERS + 1], f[2];
    uint8_t *buf = (uint8_t *)xmalloc(STABLE);
    void *ret;
    int i;

    path_in(path, dir, "threads.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, 16 * MIB, MIB, 512, &shared));
    fill_pattern(buf, STABLE, 0, 1);
    CHECK_OK(vhdx_write_at(shared, 0, buf, STABLE));

    for (i = 0; i < READERS; i++) CHECK(pthread_create(&t[i], NULL, reader, (void *)(size_t)i) == 0);
    CHECK(pthread_create(&t[READERS], NULL, writer, NULL) == 0);
    for (i = 0; i <= READERS; i++) {
        CHECK(pthread_join(t[i], &ret) == 0);
        CHECK(ret == NULL);
    }
    for (i = 0; i < ROUNDS; i++) {
        uint64_t off = STABLE + (uint64_t)i * 20000;
        CHECK_OK(vhdx_read_at(shared, off, buf, 4096));
        CHECK(has_pattern(buf, 4096, off, 2));
    }
    CHECK_OK(vhdx_close_checked(shared));

    /* Each thread sees its own last error. */
    CHECK(pthread_create(&f[0], NULL, failer, (void *)"/nonexistent/first.vhdx") == 0);
    CHECK(pthread_create(&f[1], NULL, failer, (void *)"/nonexistent/second.vhdx") == 0);
    for (i = 0; i < 2; i++) {
        CHECK(pthread_join(f[i], &ret) == 0);
        CHECK(ret == NULL);
    }
    /* ...and this thread, which has not failed, still has none. */
    CHECK(strcmp(vhdx_last_error(), "") == 0);
    free(buf);
    return finish("test_threads");
}
