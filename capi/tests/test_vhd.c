/*
 * VHD (version 1) images through the same handle as VHDX: vhdx_open tells
 * them apart by content, vhdx_format says which; fixed, dynamic and
 * differencing VHDs created, written at unaligned offsets, read back,
 * reopened, queried; the VHDX-only operations refused by status; a VHD
 * chain merged (a sibling refused, then preserved), checked, repaired and
 * re-linked by path.
 *
 * Leaves WORK_DIR/c_vhd_dynamic.vhd and c_vhd_leaf.vhd (over
 * c_vhd_base.vhd), each with NAME.expected.raw, for run-tests.sh to read
 * with qemu-img (-f vpc) and vhdx2raw.
 */
#include "common.h"

#define MIB (1024u * 1024u)
#define SIZE (6u * MIB + 3u * 512u)

/* Writes a pattern of `len` bytes at `offset` to `d` and to `model`. */
static void put(VhdxDisk *d, uint8_t *model, uint64_t offset, size_t len, unsigned seed) {
    uint8_t *buf = (uint8_t *)xmalloc(len);
    fill_pattern(buf, len, offset, seed);
    CHECK_OK(vhdx_write_at(d, offset, buf, len));
    memcpy(model + offset, buf, len);
    free(buf);
}

static void same_as_model(VhdxDisk *d, const uint8_t *model) {
    uint8_t *buf = (uint8_t *)xmalloc(SIZE);
    CHECK_OK(vhdx_read_at(d, 0, buf, SIZE));
    CHECK(memcmp(buf, model, SIZE) == 0);
    free(buf);
}

static void leave_raw(const char *dir, const char *name, const uint8_t *model) {
    char raw[4096];
    path_in(raw, dir, name);
    raw_create(raw, SIZE);
    raw_put(raw, 0, model, SIZE);
}

int main(int argc, char **argv) {
    const char *dir = work_dir(argc, argv);
    char dynamic[4096], fixed[4096], base[4096], leaf[4096], vhdx[4096];
    uint8_t *model = (uint8_t *)calloc(1, SIZE), *chain = (uint8_t *)calloc(1, SIZE);
    VhdxDisk *d = NULL, *p = NULL;
    VhdxInfo info = {.struct_size = sizeof info};
    path_in(dynamic, dir, "c_vhd_dynamic.vhd");
    path_in(fixed, dir, "c_vhd_fixed.vhd");
    path_in(base, dir, "c_vhd_base.vhd");
    path_in(leaf, dir, "c_vhd_leaf.vhd");
    path_in(vhdx, dir, "c_vhd_not.vhdx");

    /* Dynamic, 512 KiB blocks: unaligned writes across blocks and the end. */
    CHECK_OK(vhdx_create_vhd(dynamic, false, SIZE, 512 * 1024, &d));
    CHECK(vhdx_format(d) == VHDX_FORMAT_VHD);
    CHECK(vhdx_virtual_size(d) == SIZE);
    CHECK(vhdx_logical_sector_size(d) == 512);
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_DYNAMIC);
    put(d, model, 12345, 100000, 1);
    put(d, model, 512 * 1024 - 7, 20, 2);
    put(d, model, SIZE - 700, 700, 3);
    CHECK_OK(vhdx_flush(d));
    same_as_model(d, model);
    /* VHDX-only operations give VHDX_ERR_UNSUPPORTED, naming the reason. */
    CHECK_ERR(vhdx_resize(d, 2 * SIZE, false), VHDX_ERR_UNSUPPORTED, "VHD");
    CHECK_ERR(vhdx_compact(d, NULL), VHDX_ERR_UNSUPPORTED, "VHD");
    CHECK_ERR(vhdx_discard(d, 0, 4096), VHDX_ERR_UNSUPPORTED, "VHD");
    CHECK_OK(vhdx_close_checked(d));
    /* Reopened by content, read-only: the same bytes; writes refused. */
    CHECK_OK(vhdx_open(dynamic, false, &d));
    CHECK(vhdx_format(d) == VHDX_FORMAT_VHD);
    same_as_model(d, model);
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.disk_type == VHDX_DISK_TYPE_DYNAMIC && info.virtual_size == SIZE && info.block_size == 512 * 1024);
    CHECK(info.total_blocks == 13 && info.allocated_blocks == 3 && info.chain_length == 1 && !info.writable);
    CHECK_ERR(vhdx_write_at(d, 0, model, 512), VHDX_ERR_READ_ONLY, "read-only");
    vhdx_close(d);
    leave_raw(dir, "c_vhd_dynamic.expected.raw", model);

    /* Fixed: the file is the disk, then the footer. */
    CHECK_OK(vhdx_create_vhd(fixed, true, SIZE, 0, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_FIXED);
    put(d, chain, 4096, 5000, 4);
    CHECK_OK(vhdx_close_checked(d));
    {
        FILE *f = fopen(fixed, "rb");
        CHECK(f != NULL && fseeko(f, 0, SEEK_END) == 0 && ftello(f) == (off_t)SIZE + 512);
        if (f != NULL) fclose(f);
    }

    /* A differencing chain: the child over a dynamic base. */
    memset(chain, 0, SIZE);
    CHECK_OK(vhdx_create_vhd(base, false, SIZE, 0, &d));
    put(d, chain, 0, 3 * MIB, 5);
    vhdx_close(d);
    CHECK_OK(vhdx_create_vhd_differencing(leaf, base, &d));
    CHECK(vhdx_disk_type(d) == VHDX_DISK_TYPE_DIFFERENCING);
    CHECK(vhdx_chain_length(d) == 2);
    put(d, chain, 1000, 777, 6);
    put(d, chain, 2 * MIB - 5, 10, 7);
    CHECK_OK(vhdx_close_checked(d));
    CHECK_OK(vhdx_open(leaf, true, &d));
    same_as_model(d, chain);
    CHECK_OK(vhdx_info(d, &info));
    CHECK(info.disk_type == VHDX_DISK_TYPE_DIFFERENCING && info.chain_length == 2 && info.has_parent_linkage);
    vhdx_close(d);
    leave_raw(dir, "c_vhd_leaf.expected.raw", chain);
    /* vhdx_open_with: a VHD alone reads zeros where the parent would; the
     * VHDX-only choices are refused by status. */
    {
        VhdxOpenOptions o;
        uint8_t sector[512];
        CHECK_OK(vhdx_open_options_init(&o, sizeof o));
        o.without_parent = true;
        CHECK_OK(vhdx_open_with(leaf, &o, &d));
        CHECK(vhdx_format(d) == VHDX_FORMAT_VHD && vhdx_chain_length(d) == 1);
        CHECK_OK(vhdx_read_at(d, 10 * 512, sector, 512)); /* the base's, not the child's */
        CHECK(all_zero(sector, 512));
        vhdx_close(d);
        /* force_share: read while a writer holds the file (as qemu-img -U). */
        CHECK_OK(vhdx_open(leaf, true, &p));
        CHECK_OK(vhdx_open_options_init(&o, sizeof o));
        CHECK_ERR(vhdx_open_with(leaf, &o, &d), VHDX_ERR_BUSY, "in use");
        o.force_share = true;
        CHECK_OK(vhdx_open_with(leaf, &o, &d));
        CHECK(vhdx_format(d) == VHDX_FORMAT_VHD && vhdx_chain_length(d) == 2);
        same_as_model(d, chain);
        vhdx_close(d);
        o.writable = true;
        CHECK_ERR(vhdx_open_with(leaf, &o, &d), VHDX_ERR_INVALID_ARGUMENT, "force-share");
        CHECK(d == NULL);
        vhdx_close(p);
        CHECK_OK(vhdx_open_options_init(&o, sizeof o));
        o.parent_search_dirs = (const char *const[]){dir};
        o.parent_search_dir_count = 1;
        CHECK_ERR(vhdx_open_with(leaf, &o, &d), VHDX_ERR_UNSUPPORTED, "parent_search_dirs");
        CHECK(d == NULL);
    }

    /* Chains mix nothing; a VHD cannot be a VHDX's parent handle. */
    CHECK_OK(vhdx_create_dynamic(vhdx, SIZE - 3 * 512, 0, 0, &p));
    CHECK(vhdx_format(p) == VHDX_FORMAT_VHDX);
    vhdx_close(p);
    CHECK_ERR(vhdx_create_vhd_differencing(leaf, base, &d), VHDX_ERR_IO, "exists");
    {
        char other[4096];
        path_in(other, dir, "c_vhd_other.vhd");
        CHECK_ERR(vhdx_create_vhd_differencing(other, vhdx, &d), VHDX_ERR_CORRUPT, "not a VHD footer");
        CHECK(d == NULL);
    }
    {
        char odd[4096];
        path_in(odd, dir, "c_vhd_odd.vhd");
        CHECK_ERR(vhdx_create_vhd(odd, true, 1000, 0, &d), VHDX_ERR_INVALID_ARGUMENT, "multiple of 512");
        CHECK(access(odd, F_OK) != 0);
    }
    CHECK(vhdx_format(NULL) == VHDX_ERR_INVALID_ARGUMENT);

    /* vhdx_convert: an Azure-ready fixed VHD (whole MiB, zeros after), and
     * a VHD child converted alone onto its parent converted to VHDX. */
    {
        char azure[4096], base_x[4096], leaf_x[4096];
        VhdxConvertOptions co;
        VhdxConvertReport cr = {.struct_size = sizeof cr};
        uint8_t *up = (uint8_t *)calloc(1, 7 * MIB);
        path_in(azure, dir, "c_vhd_azure.vhd");
        path_in(base_x, dir, "c_vhd_base_conv.vhdx");
        path_in(leaf_x, dir, "c_vhd_leaf_conv.vhdx");
        CHECK_OK(vhdx_convert_options_init(&co, sizeof co));
        co.azure = true;
        co.disk_type = VHDX_DISK_TYPE_FIXED;
        CHECK_ERR(vhdx_convert(dynamic, azure, &co, &cr), VHDX_ERR_INVALID_ARGUMENT, "azure");
        co.disk_type = VHDX_DISK_TYPE_DYNAMIC;
        CHECK_OK(vhdx_convert(dynamic, azure, &co, &cr));
        CHECK_OK(vhdx_open(azure, false, &d));
        CHECK(vhdx_format(d) == VHDX_FORMAT_VHD && vhdx_disk_type(d) == VHDX_DISK_TYPE_FIXED);
        CHECK(vhdx_virtual_size(d) == 7 * MIB);
        CHECK_OK(vhdx_read_at(d, 0, up, 7 * MIB));
        CHECK(memcmp(up, model, SIZE) == 0 && all_zero(up + SIZE, 7 * MIB - SIZE));
        vhdx_close(d);
        {
            FILE *f = fopen(azure, "rb");
            CHECK(f != NULL && fseeko(f, 0, SEEK_END) == 0 && ftello(f) == (off_t)(7 * MIB + 512));
            if (f != NULL) fclose(f);
        }
        CHECK_OK(vhdx_convert_options_init(&co, sizeof co));
        CHECK_OK(vhdx_convert(base, base_x, &co, NULL));
        co.parent_path = base_x;
        CHECK_OK(vhdx_convert(leaf, leaf_x, &co, NULL));
        CHECK_OK(vhdx_open(leaf_x, false, &d));
        CHECK(vhdx_format(d) == VHDX_FORMAT_VHDX && vhdx_chain_length(d) == 2);
        same_as_model(d, chain);
        vhdx_close(d);
        free(up);
    }

    /* The chain operations take a VHD chain by its paths: a merge refused
     * while a sibling would change, then with the sibling preserved; the
     * child and the sibling read as before, the target holds the merge. */
    {
        char mbase[4096], mkid[4096], msib[4096], moved[4096], report[1024];
        uint8_t *kid_view = (uint8_t *)calloc(1, SIZE), *sib_view = (uint8_t *)calloc(1, SIZE);
        VhdxMergeOptions mo;
        VhdxMergeReport mr = {.struct_size = sizeof mr};
        path_in(mbase, dir, "c_vhd_m_base.vhd");
        path_in(mkid, dir, "c_vhd_m_kid.vhd");
        path_in(msib, dir, "c_vhd_m_sib.vhd");
        path_in(moved, dir, "c_vhd_m_moved.vhd");
        CHECK_OK(vhdx_create_vhd(mbase, false, SIZE, 0, &d));
        put(d, kid_view, 0, 2 * MIB, 8);
        vhdx_close(d);
        memcpy(sib_view, kid_view, SIZE);
        CHECK_OK(vhdx_create_vhd_differencing(mkid, mbase, &d));
        put(d, kid_view, MIB, 3 * MIB, 9);
        CHECK_OK(vhdx_close_checked(d));
        CHECK_OK(vhdx_create_vhd_differencing(msib, mbase, &d));
        put(d, sib_view, 4096, 4096, 10);
        CHECK_OK(vhdx_close_checked(d));
        CHECK_ERR(vhdx_merge(mkid, 1), VHDX_ERR_REFUSED, "c_vhd_m_sib.vhd");
        CHECK_OK(vhdx_merge_options_init(&mo, sizeof mo));
        mo.siblings = VHDX_SIBLINGS_FORCE;
        CHECK_ERR(vhdx_merge_with(mkid, &mo, &mr), VHDX_ERR_REFUSED, "refused for VHD");
        mo.siblings = VHDX_SIBLINGS_PRESERVE;
        CHECK_OK(vhdx_merge_with(mkid, &mo, &mr));
        CHECK(mr.bytes_merged == 3 * MIB && mr.images_merged == 1 && mr.siblings == 1 && !mr.siblings_broken);
        CHECK(mr.bytes_preserved == 3 * MIB); /* what the kid holds; the sibling holds none of it */
        CHECK_OK(vhdx_open(mkid, false, &d));
        same_as_model(d, kid_view);
        CHECK_OK(vhdx_info(d, &info));
        CHECK(info.allocated_blocks == 0 && info.chain_length == 2);
        vhdx_close(d);
        CHECK_OK(vhdx_open(msib, false, &d));
        same_as_model(d, sib_view);
        vhdx_close(d);
        CHECK_OK(vhdx_open(mbase, false, &d));
        same_as_model(d, kid_view);
        vhdx_close(d);
        CHECK(vhdx_check(mkid, report, sizeof report) == 0);
        CHECK(vhdx_repair(mbase, report, sizeof report) == 0);
        /* Re-linked onto a copy of its parent. */
        {
            FILE *in = fopen(mbase, "rb"), *out = fopen(moved, "wb");
            char buf[65536];
            size_t n;
            CHECK(in != NULL && out != NULL);
            while (in != NULL && out != NULL && (n = fread(buf, 1, sizeof buf, in)) > 0) CHECK(fwrite(buf, 1, n, out) == n);
            if (in != NULL) fclose(in);
            if (out != NULL) fclose(out);
        }
        CHECK_OK(vhdx_set_parent(msib, moved, false));
        CHECK(remove(mbase) == 0);
        CHECK_OK(vhdx_open(msib, false, &d));
        same_as_model(d, sib_view);
        vhdx_close(d);
        CHECK_ERR(vhdx_set_parent(msib, vhdx, false), VHDX_ERR_INVALID_ARGUMENT, "must be a VHD");
        free(kid_view);
        free(sib_view);
    }
    free(model);
    free(chain);
    return finish("test_vhd");
}
