/*
 * Images in use are locked: a writable handle refuses every other open of
 * its file (VHDX_ERR_BUSY, with a message naming the file), read-only
 * handles share with each other but refuse a writer, a parent is shared by
 * the children open on it, and force_share inspects an image in use without
 * a lock (read-only only). The locks are those QEMU uses, so two handles of
 * one process behave as two processes do.
 */
#include "common.h"

#define MIB (1024u * 1024u)

static void test_writer_excludes_everyone(const char *dir) {
    char path[4096];
    VhdxDisk *w = NULL;
    VhdxDisk *other = NULL;
    VhdxOpenOptions oo;
    uint8_t data[4096];
    uint8_t back[4096];

    path_in(path, dir, "c_busy.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, 8 * MIB, MIB, 512, &w));
    fill_pattern(data, sizeof data, 4096, 7);
    CHECK_OK(vhdx_write_at(w, 4096, data, sizeof data));
    CHECK_OK(vhdx_flush(w));

    /* A second writable open of the same file is refused, naming it. */
    other = (VhdxDisk *)(void *)&other;
    CHECK_ERR(vhdx_open(path, true, &other), VHDX_ERR_BUSY, "c_busy.vhdx");
    CHECK(other == NULL);
    CHECK(strstr(vhdx_last_error(), "in use") != NULL);
    /* So is a read-only one, which is told how to look anyway. */
    CHECK_ERR(vhdx_open(path, false, &other), VHDX_ERR_BUSY, "c_busy.vhdx");
    CHECK(strstr(vhdx_last_error(), "force-share") != NULL);

    /* force_share reads it without a lock... */
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    oo.force_share = true;
    CHECK_OK(vhdx_open_with(path, &oo, &other));
    CHECK_OK(vhdx_read_at(other, 4096, back, sizeof back));
    CHECK(memcmp(back, data, sizeof data) == 0);
    vhdx_close(other);
    other = NULL;
    /* ...but never for writing. */
    oo.writable = true;
    CHECK_ERR(vhdx_open_with(path, &oo, &other), VHDX_ERR_INVALID_ARGUMENT, "force-share");
    CHECK(other == NULL);

    /* Once the writer is closed, the file opens again. */
    CHECK_OK(vhdx_close_checked(w));
    CHECK_OK(vhdx_open(path, true, &w));
    CHECK_OK(vhdx_close_checked(w));
}

static void test_readers_share_and_refuse_a_writer(const char *dir) {
    char path[4096];
    VhdxDisk *d = NULL;
    VhdxDisk *r1 = NULL;
    VhdxDisk *r2 = NULL;

    path_in(path, dir, "c_shared.vhdx");
    CHECK_OK(vhdx_create_dynamic(path, 8 * MIB, MIB, 512, &d));
    CHECK_OK(vhdx_close_checked(d));
    CHECK_OK(vhdx_open(path, false, &r1));
    CHECK_OK(vhdx_open(path, false, &r2));
    d = NULL;
    CHECK_ERR(vhdx_open(path, true, &d), VHDX_ERR_BUSY, "c_shared.vhdx");
    CHECK(d == NULL);
    vhdx_close(r1);
    CHECK_ERR(vhdx_open(path, true, &d), VHDX_ERR_BUSY, "c_shared.vhdx");
    vhdx_close(r2);
    CHECK_OK(vhdx_open(path, true, &d));
    CHECK_OK(vhdx_close_checked(d));
}

static void test_children_share_their_parent(const char *dir) {
    char parent[4096];
    char a[4096];
    char b[4096];
    VhdxDisk *p = NULL;
    VhdxDisk *ca = NULL;
    VhdxDisk *cb = NULL;
    uint8_t data[512];

    path_in(parent, dir, "c_parent.vhdx");
    path_in(a, dir, "c_child_a.vhdx");
    path_in(b, dir, "c_child_b.vhdx");
    CHECK_OK(vhdx_create_dynamic(parent, 8 * MIB, MIB, 512, &p));
    CHECK_OK(vhdx_close_checked(p));
    CHECK_OK(vhdx_create_differencing(a, parent, &ca));
    CHECK_OK(vhdx_create_differencing(b, parent, &cb));
    /* Both children write while both read the parent. */
    fill_pattern(data, sizeof data, 0, 3);
    CHECK_OK(vhdx_write_at(ca, 0, data, sizeof data));
    CHECK_OK(vhdx_write_at(cb, 512, data, sizeof data));
    /* The parent cannot be written under them. */
    p = NULL;
    CHECK_ERR(vhdx_open(parent, true, &p), VHDX_ERR_BUSY, "c_parent.vhdx");
    CHECK_OK(vhdx_close_checked(ca));
    CHECK_OK(vhdx_close_checked(cb));
    CHECK_OK(vhdx_open(parent, true, &p));
    CHECK_OK(vhdx_close_checked(p));
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    test_writer_excludes_everyone(dir);
    test_readers_share_and_refuse_a_writer(dir);
    test_children_share_their_parent(dir);
    return finish("test_busy");
}
