//! VHD (version 1) fixtures made by Windows, Virtual PC, Disk2vhd and QEMU,
//! read against the hashes `SOURCES.md` publishes (agreed by QEMU, libvhdi,
//! dissect.hypervisor and a reader written from the specification), the
//! two differencing chains included.

use vhdx::format::vhd::VhdType;
use vhdx::vhd::VhdDisk;
use vhdx::Extent;

use crate::common::compare::sha256_device;
use crate::common::files::{fixture, fixture_into};

struct VhdFixture {
    rel: &'static str,
    parent: Option<&'static str>,
    disk_type: VhdType,
    size: u64,
    /// sha256 of the whole virtual disk; `None` for the 127 GiB empty
    /// disks, which are checked to map as zeros instead.
    sha_raw: Option<&'static str>,
}

const FIXTURES: &[VhdFixture] = &[
    VhdFixture {
        rel: "vhd/dfvfs/ntfs-fixed.vhd.gz",
        parent: None,
        disk_type: VhdType::Fixed,
        size: 4194304,
        sha_raw: Some("cd81fade3878f1b2957f1ece168201876bdf4e90c9b30f60c2f232eba5fea76c"),
    },
    VhdFixture {
        rel: "vhd/dfvfs/ntfs-dynamic.vhd.gz",
        parent: None,
        disk_type: VhdType::Dynamic,
        size: 4194304,
        sha_raw: Some("8b10b52e3d1e76075d05a5101a6536b9fa8376a5b8f7c22f502d0987d165c876"),
    },
    VhdFixture {
        rel: "vhd/dfvfs/ntfs-parent.vhd.gz",
        parent: None,
        disk_type: VhdType::Fixed,
        size: 4194304,
        sha_raw: Some("c91d1766dd4b3327f33a082cbf958d3566dd84a3d71c2473a5ae6155e53171de"),
    },
    VhdFixture {
        rel: "vhd/dfvfs/ntfs-differential.vhd.gz",
        parent: Some("vhd/dfvfs/ntfs-parent.vhd.gz"),
        disk_type: VhdType::Differencing,
        size: 4194304,
        sha_raw: Some("b7922a46a6b08fa4f4fc0c51a25d5587d1d49f15cfade45ca740dd07110ae144"),
    },
    VhdFixture {
        rel: "vhd/dfvfs/fat-parent.vhd.gz",
        parent: None,
        disk_type: VhdType::Fixed,
        size: 4194304,
        sha_raw: Some("bbdb657bc5aa2fde44e2456149f9257a862cb84f4668e338b90e357b0fbdf118"),
    },
    VhdFixture {
        rel: "vhd/dfvfs/fat-differential.vhd.gz",
        parent: Some("vhd/dfvfs/fat-parent.vhd.gz"),
        disk_type: VhdType::Differencing,
        size: 4194304,
        sha_raw: Some("f4b61a33ee2f7e8c19f737792a4107e46340026a9a829e4169b751901cc3ef02"),
    },
    VhdFixture {
        rel: "vhd/dfvfs/ext2.vhd.gz",
        parent: None,
        disk_type: VhdType::Dynamic,
        size: 4212736,
        sha_raw: Some("870be7ae16c1fa8faab05c6eb9205dc9a7ae35c5f552c5cf8a267c0bc6a5cb99"),
    },
    VhdFixture {
        rel: "vhd/dfvfs/image.vhd.gz",
        parent: None,
        disk_type: VhdType::Dynamic,
        size: 104448,
        sha_raw: Some("c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25"),
    },
    VhdFixture {
        rel: "vhd/dfvfs/image-differential.vhd.gz",
        parent: Some("vhd/dfvfs/image.vhd.gz"),
        disk_type: VhdType::Differencing,
        size: 104448,
        sha_raw: Some("c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25"),
    },
    VhdFixture {
        rel: "vhd/qemu/hyperv2012r2-dynamic.vhd.bz2",
        parent: None,
        disk_type: VhdType::Dynamic,
        size: 136365211648,
        sha_raw: None,
    },
    VhdFixture {
        rel: "vhd/qemu/virtualpc-dynamic.vhd.bz2",
        parent: None,
        disk_type: VhdType::Dynamic,
        size: 136365211648,
        sha_raw: None,
    },
    VhdFixture {
        rel: "vhd/qemu/d2v-zerofilled.vhd.bz2",
        parent: None,
        disk_type: VhdType::Dynamic,
        size: 263454720,
        sha_raw: Some("1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143"),
    },
    VhdFixture {
        rel: "vhd/dissect/fixed.vhd.gz",
        parent: None,
        disk_type: VhdType::Fixed,
        size: 10485760,
        sha_raw: Some("459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463"),
    },
    VhdFixture {
        rel: "vhd/dissect/dynamic.vhd.gz",
        parent: None,
        disk_type: VhdType::Dynamic,
        size: 10485760,
        sha_raw: Some("ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784"),
    },
    VhdFixture {
        rel: "vhd/node-vhd/fixed.vhd.gz",
        parent: None,
        disk_type: VhdType::Fixed,
        size: 10485760,
        sha_raw: Some("fa0490edf13cf9699ac7ead2b2024f2ec7921f583ff824039bca0529055e409d"),
    },
    VhdFixture {
        rel: "vhd/node-vhd/dynamic.vhd.gz",
        parent: None,
        disk_type: VhdType::Dynamic,
        size: 536870912,
        sha_raw: Some("c461afded0b54cc1cfb5441e08f4d7f9d699d2eff7d9526d1cf6ad227da26683"),
    },
    VhdFixture {
        rel: "vhd/ossgadget/Shared.vhd.gz",
        parent: None,
        disk_type: VhdType::Fixed,
        size: 3145728,
        sha_raw: Some("8d4b8adf32abc94532237db6528e540eb757104994716ddc0a8abd7011472cb7"),
    },
];

#[test]
fn every_vhd_fixture_reads_as_its_published_hash() {
    for fx in FIXTURES {
        let Some(f) = fixture(fx.rel) else { return };
        if let Some(parent) = fx.parent {
            fixture_into(parent, f.dir.path());
        }
        let disk = VhdDisk::open(&f.path).unwrap_or_else(|e| panic!("{}: {e}", fx.rel));
        assert_eq!(disk.disk_type(), fx.disk_type, "{}", fx.rel);
        assert_eq!(disk.virtual_size(), fx.size, "{}", fx.rel);
        assert_eq!(disk.parent().is_some(), fx.parent.is_some(), "{}: parent attached", fx.rel);
        match fx.sha_raw {
            Some(sha) => assert_eq!(sha256_device(&disk), sha, "{}: sha256 of the virtual disk", fx.rel),
            None => {
                let map = disk.map().unwrap();
                assert!(map.iter().all(|e| e.extent == Extent::Zero), "{}: an empty disk maps as zeros", fx.rel);
            }
        }
    }
}

#[test]
fn a_footer_with_a_wrong_checksum_reads_only_read_only() {
    // dfvfs/image.vhd's footer was edited without its checksum (QEMU
    // refuses it; libvhdi and dissect read it).
    let Some(f) = fixture("vhd/dfvfs/image.vhd.gz") else { return };
    let disk = VhdDisk::open(&f.path).unwrap();
    let e = disk.footer_checksum_error().expect("the checksum error is reported").to_string();
    assert!(e.contains("checksum") && e.contains("VHD footer"), "{e}");
    drop(disk);
    let e = VhdDisk::open_writable(&f.path).unwrap_err().to_string();
    assert!(e.contains("checksum") && e.contains("image.vhd"), "{e}");
}

#[test]
fn a_child_without_its_parent_is_refused_and_a_wrong_parent_named() {
    let Some(f) = fixture("vhd/dfvfs/ntfs-differential.vhd.gz") else { return };
    let e = VhdDisk::open(&f.path).unwrap_err().to_string();
    assert!(e.contains("ntfs-parent.vhd") && e.contains("not found"), "{e}");
    assert!(e.contains("C:\\Projects\\dfvfs\\test_data\\ntfs-parent.vhd"), "the Windows path is named: {e}");
    // Another disk under the parent's name: refused by its unique ID.
    let other = fixture_into("vhd/dfvfs/fat-parent.vhd.gz", f.dir.path());
    std::fs::rename(other, f.dir.path().join("ntfs-parent.vhd")).unwrap();
    let e = VhdDisk::open(&f.path).unwrap_err().to_string();
    assert!(e.contains("mismatch"), "{e}");
}
