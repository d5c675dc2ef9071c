/*
 * Differencing chains: create a child, write through it, read the mixed
 * view; merge (refused with a sibling, then with siblings preserved, forced,
 * and two levels deep); find parents through a resolver callback, a parent
 * handle, and confined search directories.
 *
 * Leaves WORK_DIR/chain_leaf.vhdx (a three-image chain) for run-tests.sh to
 * flatten with vhdx2raw, and chain_leaf.expected.raw beside it: this test's
 * in-memory model of the chain, built from what it wrote.
 */
#include "common.h"

#define MIB (1024u * 1024u)
#define SIZE (16 * MIB)

/* The view of a chain, kept in memory as the model. */
static uint8_t *model_new(void) {
    uint8_t *m = (uint8_t *)xmalloc(SIZE);
    memset(m, 0, SIZE);
    return m;
}

static void write_model(VhdxDisk *d, uint8_t *model, uint64_t offset, size_t len, unsigned seed) {
    fill_pattern(model + offset, len, offset, seed);
    CHECK_OK(vhdx_write_at(d, offset, model + offset, len));
}

static void verify_model(VhdxDisk *d, const uint8_t *model) {
    uint8_t *buf = (uint8_t *)xmalloc(SIZE);
    CHECK(vhdx_virtual_size(d) == SIZE);
    CHECK_OK(vhdx_read_at(d, 0, buf, SIZE));
    CHECK(memcmp(buf, model, SIZE) == 0);
    free(buf);
}

static void verify_file(const char *path, const uint8_t *model) {
    VhdxDisk *d = NULL;
    CHECK_OK(vhdx_open(path, false, &d));
    verify_model(d, model);
    vhdx_close(d);
}

static void make_base(const char *path, uint8_t *model) {
    VhdxDisk *d = NULL;
    CHECK_OK(vhdx_create_dynamic(path, SIZE, MIB, 512, &d));
    write_model(d, model, 0, 4 * MIB, 1);
    write_model(d, model, 12 * MIB + 7, 5000, 11);
    CHECK_OK(vhdx_close_checked(d));
}

static void guid_of(const char *path, uint8_t guid[16]) {
    VhdxDisk *d = NULL;
    VhdxInfo info = {.struct_size = sizeof info};
    CHECK_OK(vhdx_open(path, false, &d));
    CHECK_OK(vhdx_info(d, &info));
    memcpy(guid, info.data_write_guid, 16);
    vhdx_close(d);
}

static void test_merge(const char *dir) {
    char base[4096], child[4096], sib[4096], got[4096];
    uint8_t *base_model = model_new(), *child_model, *sib_model;
    uint8_t base_guid[16];
    VhdxDisk *d = NULL;
    VhdxInfo info = {.struct_size = sizeof info};
    VhdxMergeOptions mo;
    VhdxMergeReport report = {.struct_size = sizeof report};

    path_in(base, dir, "m_base.vhdx");
    path_in(child, dir, "m_child.vhdx");
    path_in(sib, dir, "m_sibling.vhdx");
    make_base(base, base_model);
    guid_of(base, base_guid);

    /* The child reads as its parent, then holds its own writes. */
    CHECK_OK(vhdx_create_differencing(child, base, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_DIFFERENCING);
    CHECK(vhdx_chain_length(d) == 2);
    CHECK(vhdx_chain_path(d, 1, got, sizeof got) == (int32_t)strlen(base));
    CHECK(strcmp(got, base) == 0);
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.has_parent_linkage);
    CHECK(memcmp(info.parent_linkage, base_guid, 16) == 0);
    CHECK(info.chain_length == 2);
    CHECK(info.block_size == 2 * MIB);
    verify_model(d, base_model);
    child_model = model_new();
    memcpy(child_model, base_model, SIZE);
    write_model(d, child_model, MIB + 100, 300000, 2);
    write_model(d, child_model, 8 * MIB, 4096, 3);
    write_model(d, child_model, SIZE - 1, 1, 4);
    verify_model(d, child_model);
    vhdx_close(d);
    verify_file(child, child_model);
    verify_file(base, base_model);

    /* A sibling: the merge must refuse, name it, and change nothing. */
    sib_model = model_new();
    memcpy(sib_model, base_model, SIZE);
    CHECK_OK(vhdx_create_differencing(sib, base, &d));
    write_model(d, sib_model, 2 * MIB, 70000, 5);
    vhdx_close(d);
    CHECK_ERR(vhdx_merge(child, 1), VHDX_ERR_REFUSED, "m_sibling.vhdx");
    CHECK(strstr(vhdx_last_error(), "m_child.vhdx") != NULL);
    verify_file(child, child_model);
    verify_file(sib, sib_model);
    verify_file(base, base_model);

    /* Preserve: the sibling gets what it would lose, and keeps its view. */
    CHECK_OK(vhdx_merge_options_init(&mo, sizeof mo));
    CHECK(mo.depth == 1 && mo.siblings == VHDX_SIBLINGS_REFUSE);
    mo.siblings = VHDX_SIBLINGS_PRESERVE;
    memset(&report, 0xFF, sizeof report);
    report.struct_size = sizeof report;
    CHECK_OK(vhdx_merge_with(child, &mo, &report));
    CHECK(report.bytes_merged >= 300000 + 4096 + 1);
    CHECK(report.images_merged == 1);
    CHECK(report.siblings == 1);
    CHECK(report.bytes_preserved > 0);
    CHECK(!report.siblings_broken);
    verify_file(base, child_model);
    verify_file(child, child_model);
    verify_file(sib, sib_model);
    CHECK_OK(vhdx_open(child, false, &d));
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.allocated_blocks == 0); /* emptied into the parent */
    vhdx_close(d);
    CHECK(vhdx_check(base, NULL, 0) == 0);
    CHECK(vhdx_check(child, NULL, 0) == 0);
    CHECK(vhdx_check(sib, NULL, 0) == 0);
    free(base_model);
    free(child_model);
    free(sib_model);
}

static void test_force_and_depth(const char *dir) {
    char base[4096], mid[4096], leaf[4096], sib[4096], elsewhere[4096];
    const char *confine[1];
    uint8_t *model = model_new(), *sib_model = model_new();
    VhdxDisk *d = NULL;
    VhdxMergeOptions mo;
    VhdxMergeReport report = {.struct_size = sizeof report};

    path_in(base, dir, "f_base.vhdx");
    path_in(mid, dir, "f_mid.vhdx");
    path_in(leaf, dir, "f_leaf.vhdx");
    path_in(sib, dir, "f_sibling.vhdx");
    make_base(base, model);
    CHECK_OK(vhdx_create_differencing(mid, base, &d));
    write_model(d, model, 3 * MIB, 2 * MIB, 6);
    vhdx_close(d);
    CHECK_OK(vhdx_create_differencing(leaf, mid, &d));
    CHECK(vhdx_chain_length(d) == 3);
    write_model(d, model, 4 * MIB - 10, 20, 7);
    vhdx_close(d);
    CHECK_OK(vhdx_create_differencing(sib, base, &d));
    write_model(d, sib_model, 0, 1, 8); /* the sibling's model is unused: it breaks */
    vhdx_close(d);

    /* Two levels at once, siblings forced: the leaf still reads the same.
     * Confined to a directory without the parents, the merge cannot start. */
    CHECK_OK(vhdx_merge_options_init(&mo, sizeof mo));
    CHECK(mo.confine_dir_count == 0 && mo.confine_dirs == NULL);
    mo.depth = 2;
    mo.siblings = VHDX_SIBLINGS_FORCE;
    path_in(elsewhere, dir, "f_elsewhere");
    make_dir(elsewhere);
    confine[0] = elsewhere;
    mo.confine_dirs = confine;
    mo.confine_dir_count = 1;
    CHECK_ERR(vhdx_merge_with(leaf, &mo, &report), VHDX_ERR_PARENT_NOT_FOUND, "outside the allowed directories");
    verify_file(leaf, model);
    confine[0] = dir;
    CHECK_OK(vhdx_merge_with(leaf, &mo, &report));
    CHECK(report.images_merged == 2);
    CHECK(report.siblings == 1);
    CHECK(report.siblings_broken);
    verify_file(base, model);
    verify_file(mid, model);
    verify_file(leaf, model);
    CHECK_ERR(vhdx_open(sib, false, &d), VHDX_ERR_PARENT_MISMATCH, "f_sibling.vhdx");
    free(model);
    free(sib_model);
}

/* A resolver that knows where parents were moved to. */
struct resolver_state {
    const char *dir;
    int calls;
    unsigned max_depth;
    int answer_not_found;
    const char *wrong_answer;
};

static int32_t resolve(void *user, const VhdxParentQuery *q, char *path_buf, size_t path_cap) {
    struct resolver_state *s = (struct resolver_state *)user;
    const char *name;
    int n;
    s->calls++;
    if (q->depth > s->max_depth) s->max_depth = q->depth;
    if (q->struct_size < sizeof *q) return -102; /* a library older than this header */
    if (q->parent_linkage == NULL || q->parent_linkage[0] != '{' || strlen(q->parent_linkage) != 38) return -100;
    if (q->relative_path == NULL || q->child_path == NULL || path_cap < 4096) return -101;
    if (s->answer_not_found) return VHDX_ERR_PARENT_NOT_FOUND;
    if (s->wrong_answer != NULL) {
        n = snprintf(path_buf, path_cap, "%s", s->wrong_answer);
        return n > 0 && (size_t)n < path_cap ? VHDX_OK : -102;
    }
    /* The locator says ".\r_base.vhdx"; the file is now "moved/r_base.vhdx". */
    name = strrchr(q->relative_path, '\\');
    name = name != NULL ? name + 1 : q->relative_path;
    n = snprintf(path_buf, path_cap, "%s/moved/%s", s->dir, name);
    return n > 0 && (size_t)n < path_cap ? VHDX_OK : -103;
}

static void test_finding_parents(const char *dir) {
    char base[4096], mid[4096], leaf[4096], moved_dir[4096], moved_base[4096], moved_mid[4096];
    char other_dir[4096], got[4096];
    uint8_t *model = model_new();
    VhdxDisk *d = NULL, *parent = NULL;
    VhdxOpenOptions oo;
    struct resolver_state state;
    const char *dirs[1];

    path_in(base, dir, "r_base.vhdx");
    path_in(mid, dir, "r_mid.vhdx");
    path_in(leaf, dir, "r_leaf.vhdx");
    path_in(moved_dir, dir, "moved");
    path_in(other_dir, dir, "other");
    make_base(base, model);
    CHECK_OK(vhdx_create_differencing(mid, base, &d));
    write_model(d, model, 5 * MIB, 100, 9);
    vhdx_close(d);
    CHECK_OK(vhdx_create_differencing(leaf, mid, &d));
    write_model(d, model, 5 * MIB + 50, 100, 10);
    vhdx_close(d);

    /* Move the two parents away: the locator no longer finds them. */
    make_dir(moved_dir);
    make_dir(other_dir);
    path_in(moved_base, moved_dir, "r_base.vhdx");
    path_in(moved_mid, moved_dir, "r_mid.vhdx");
    CHECK(rename(base, moved_base) == 0);
    CHECK(rename(mid, moved_mid) == 0);
    CHECK_ERR(vhdx_open(leaf, false, &d), VHDX_ERR_PARENT_NOT_FOUND, "r_leaf.vhdx");

    /* A resolver callback finds both levels. */
    memset(&state, 0, sizeof state);
    state.dir = dir;
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    oo.resolve_parent = resolve;
    oo.resolve_user = &state;
    CHECK_OK(vhdx_open_with(leaf, &oo, &d));
    CHECK(state.calls == 2);
    CHECK(state.max_depth == 2);
    CHECK(vhdx_chain_length(d) == 3);
    CHECK(vhdx_chain_path(d, 2, got, sizeof got) > 0);
    CHECK(strcmp(got, moved_base) == 0);
    verify_model(d, model);
    vhdx_close(d);

    /* A resolver that does not know, or answers with the wrong image. */
    state.answer_not_found = 1;
    CHECK_ERR(vhdx_open_with(leaf, &oo, &d), VHDX_ERR_PARENT_NOT_FOUND, "r_leaf.vhdx");
    CHECK(strstr(vhdx_last_error(), "resolver callback") != NULL);
    state.answer_not_found = 0;
    state.wrong_answer = moved_base; /* the grandparent, not the parent */
    CHECK_ERR(vhdx_open_with(leaf, &oo, &d), VHDX_ERR_PARENT_MISMATCH, "r_leaf.vhdx");

    /* Re-link the leaf to the new place of its parent: the locator finds it
     * again (and r_mid finds r_base beside it through its relative path). */
    CHECK_OK(vhdx_set_parent(leaf, moved_mid, false));
    CHECK_OK(vhdx_set_parent(moved_mid, moved_base, false)); /* refreshes the absolute path */
    CHECK_OK(vhdx_open(leaf, false, &d));
    verify_model(d, model);
    vhdx_close(d);

    /* Search confined to directories: refused outside them, found inside. */
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    dirs[0] = other_dir;
    oo.parent_search_dirs = dirs;
    oo.parent_search_dir_count = 1;
    CHECK_ERR(vhdx_open_with(leaf, &oo, &d), VHDX_ERR_PARENT_NOT_FOUND, "outside the allowed directories");
    dirs[0] = moved_dir;
    CHECK_OK(vhdx_open_with(leaf, &oo, &d));
    CHECK(vhdx_chain_length(d) == 3);
    verify_model(d, model);
    vhdx_close(d);

    /* A parent handle opened by the caller (any vhdx_open* function). */
    CHECK_OK(vhdx_open(moved_mid, false, &parent));
    CHECK_OK(vhdx_open_options_init(&oo, sizeof oo));
    oo.parent = parent;
    CHECK_OK(vhdx_open_with(leaf, &oo, &d));
    verify_model(d, model);
    vhdx_close(d);
    /* The wrong parent handle: refused, and released by the library. */
    CHECK_OK(vhdx_open(moved_base, false, &parent));
    oo.parent = parent;
    CHECK_ERR(vhdx_open_with(leaf, &oo, &d), VHDX_ERR_PARENT_MISMATCH, "r_leaf.vhdx");
    free(model);
}

/* A three-image chain left for run-tests.sh, with its model as a raw file. */
static void leave_chain(const char *dir) {
    char base[4096], mid[4096], leaf[4096], raw[4096];
    uint8_t *model = model_new();
    VhdxDisk *d = NULL;
    path_in(base, dir, "chain_base.vhdx");
    path_in(mid, dir, "chain_mid.vhdx");
    path_in(leaf, dir, "chain_leaf.vhdx");
    make_base(base, model);
    CHECK_OK(vhdx_create_differencing(mid, base, &d));
    write_model(d, model, 6 * MIB, 3 * MIB, 12);
    vhdx_close(d);
    CHECK_OK(vhdx_create_differencing(leaf, mid, &d));
    write_model(d, model, 100, 1000, 13);
    write_model(d, model, 7 * MIB + 3, 10, 14);
    vhdx_close(d);
    verify_file(leaf, model);
    path_in(raw, dir, "chain_leaf.expected.raw");
    raw_create(raw, SIZE);
    raw_put(raw, 0, model, SIZE);
    free(model);
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    test_merge(dir);
    test_force_and_depth(dir);
    test_finding_parents(dir);
    leave_chain(dir);
    return finish("test_chain");
}
