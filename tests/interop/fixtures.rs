//! Every fixture in `shared/fixtures/SOURCES.md`, opened read-only through the
//! library and checked against the facts and hashes published there (which
//! come from QEMU, libvhdi and dissect, which agree with each other).
//!
//! Oracles: the published `sha256(vhdx)` of each container (also proves that a
//! read-only open changes no byte), the published `sha256(raw)` of each
//! virtual disk, the published geometry, and for the dirty-log files QEMU's
//! own replay (`qemu-img check -r all` then `qemu-img convert -O raw`).

use std::path::Path;

use vhdx::{Disk, DiskType, ErrorKind, Extent, Guid, OpenOptions};

use crate::common::{compare::*, data::*, files::*, layout::*, qemu::*};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What SOURCES.md says about one fixture.
struct Fx {
    rel: &'static str,
    disk_type: DiskType,
    virtual_size: u64,
    block_size: u32,
    logical_sector_size: u32,
    physical_sector_size: u32,
    chunk_ratio: u64,
    /// sha256 of the decompressed container.
    sha_vhdx: &'static str,
    /// sha256 of the whole virtual disk (after log replay; for a child, of the
    /// chain with its parent, or child-only when it has no published parent).
    sha_raw: &'static str,
    /// Payload blocks FULLY_PRESENT or PARTIALLY_PRESENT (after replay).
    allocated_blocks: u64,
    creator: &'static str,
    virtual_disk_id: Option<&'static str>,
    data_write_guid: Option<&'static str>,
    header_sequence: Option<u64>,
    dirty_log: bool,
}

const W10_15063: &str = "Microsoft Windows 10.0.15063.0";
const W10_14393: &str = "Microsoft Windows 10.0.14393.0";
const W10_19041: &str = "Microsoft Windows 10.0.19041.0";

const DEFAULTS: Fx = Fx {
    rel: "",
    disk_type: DiskType::Dynamic,
    virtual_size: 0,
    block_size: 32 << 20,
    logical_sector_size: 512,
    physical_sector_size: 4096,
    chunk_ratio: 128,
    sha_vhdx: "",
    sha_raw: "",
    allocated_blocks: 0,
    creator: "",
    virtual_disk_id: None,
    data_write_guid: None,
    header_sequence: None,
    dirty_log: false,
};

const DIRTYLOG: Fx = Fx {
    rel: "qemu/iotest-dirtylog-10G-4M.vhdx.bz2",
    virtual_size: 10 * GIB,
    block_size: 1 << 20,
    physical_sector_size: 512,
    chunk_ratio: 4096,
    sha_vhdx: "511daba998dba208ffc57a7814194d5dd3afb7c314731b904ff1682e3fb4951a",
    sha_raw: "179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f",
    allocated_blocks: 18,
    creator: "QEMU v1.6.50",
    header_sequence: Some(932638741),
    dirty_log: true,
    ..DEFAULTS
};

const DYNAMIC_1G: Fx = Fx {
    rel: "qemu/iotest-dynamic-1G.vhdx.bz2",
    virtual_size: GIB,
    sha_vhdx: "a4fb24fa51fb4852d5a6bdc2b390a91b0a4e19b47696edc5a00c816067257402",
    sha_raw: "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478",
    allocated_blocks: 3,
    creator: "Microsoft Windows 6.2.9200.16384",
    virtual_disk_id: Some("fc7209f1-f6eb-4616-9b77-e994e3017ddd"),
    header_sequence: Some(15),
    ..DEFAULTS
};

const DISK2VHD: Fx = Fx {
    rel: "qemu/test-disk2vhd.vhdx.bz2",
    virtual_size: 256 * MIB,
    block_size: 2 << 20,
    physical_sector_size: 512,
    chunk_ratio: 2048,
    sha_vhdx: "5b6721d4f26ef13d259c380a7327b794d1c6dd79e386737d77e8d88f43259812",
    sha_raw: "96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a",
    allocated_blocks: 128,
    creator: "d2v",
    header_sequence: Some(1),
    ..DEFAULTS
};

const LOG_REPLAY: Fx = Fx {
    rel: "discutils/vhdx-log-replay.vhdx.gz",
    virtual_size: GIB,
    sha_vhdx: "d0805b6f7cdd3908239442900d73053a013079f839656d69bae00a44948983d6",
    sha_raw: "3ba3b309425b7ff5e8e0199edceed95226250f880c53b24e8eae93865f3fad5e",
    allocated_blocks: 1,
    creator: W10_15063,
    header_sequence: Some(9),
    dirty_log: true,
    ..DEFAULTS
};

const BTRFS: Fx = Fx {
    rel: "discutils/btrfs.vhdx.gz",
    virtual_size: GIB,
    sha_vhdx: "e1ec34ba6fea6a047e5b97f6b9355798f4bf22e5d9fb120013d912a41babf2a4",
    sha_raw: "0b959f9cb4e18348ad8b646f152178282542c8304f02fddf765e3fd1a1de6864",
    allocated_blocks: 2,
    creator: W10_15063,
    ..DEFAULTS
};

const SWAP: Fx = Fx {
    rel: "discutils/swap.vhdx.gz",
    virtual_size: 10 * GIB,
    sha_vhdx: "e5427cf8e9a9dfc28f2c1f24e2a7294e62b3e48bcff25b458f51871092540582",
    sha_raw: "60dd30b4c74361427d1089510cabb36e2eeda0cc4747f467ea43173acd358c49",
    allocated_blocks: 1,
    creator: W10_14393,
    ..DEFAULTS
};

const XFS: Fx = Fx {
    rel: "discutils/xfs.vhdx.gz",
    virtual_size: 10 * GIB,
    sha_vhdx: "caf6bc9f79ea216b9c5c51335d204b066d747b60f8bd2f4deafc707459d0c2ea",
    sha_raw: "8ca2bd2d91f1c6ada47128fc2f8d38587e73954ede5a664fe2bb09c19606060e",
    allocated_blocks: 20,
    creator: W10_14393,
    ..DEFAULTS
};

const XFS5: Fx = Fx {
    rel: "discutils/xfs5.vhdx.gz",
    virtual_size: 10 * GIB,
    sha_vhdx: "df4069a8cb6ca640abac262f2d1809b9eff0cc78b16aca802f9f92746db77aa3",
    sha_raw: "edc5d630b2da0ddb08992afb58ded06ffb56b884e184b4974fda16e31b7e6817",
    allocated_blocks: 5,
    creator: "Microsoft Windows 10.0.17134.0",
    ..DEFAULTS
};

const LVM2: Fx = Fx {
    rel: "discutils/lvm2.vhdx.gz",
    virtual_size: 10 * GIB,
    sha_vhdx: "2940b9b677e0754da0438505a41ca5c623fb8d3039940a0460c4acdf3c0cc60c",
    sha_raw: "f7dc6812a3b12a35f3ec895ce981bd59ff4558270fc80cd812c9cd522bff1295",
    allocated_blocks: 18,
    creator: W10_14393,
    ..DEFAULTS
};

const DISSECT_FIXED: Fx = Fx {
    rel: "dissect/fixed.vhdx.gz",
    disk_type: DiskType::Fixed,
    virtual_size: 10 * MIB,
    block_size: 2 << 20,
    chunk_ratio: 2048,
    sha_vhdx: "f2d743755f1872335fb1554116feecda67825719080ebb875b97dfacf7c1f590",
    sha_raw: "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62",
    allocated_blocks: 5,
    creator: "Microsoft Windows 10.0.18363.0",
    virtual_disk_id: Some("4a49d245-db0a-4634-9818-9f93db5ba6c1"),
    header_sequence: Some(7),
    ..DEFAULTS
};

const DISSECT_DYNAMIC: Fx = Fx {
    rel: "dissect/dynamic.vhdx.gz",
    virtual_size: 10 * MIB,
    sha_vhdx: "72e9aa1af9cc53c84585a8017246f14f7c9f2dd54bb3f52e3b70919b2af600b9",
    sha_raw: "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac",
    allocated_blocks: 1,
    creator: "Microsoft Windows 10.0.18363.0",
    virtual_disk_id: Some("788015f0-5e93-4bd2-a5de-b0cd8459db11"),
    ..DEFAULTS
};

/// Child-only view (the parent is not published).
const DISSECT_DIFFERENCING: Fx = Fx {
    rel: "dissect/differencing.avhdx.gz",
    disk_type: DiskType::Differencing,
    virtual_size: 8 * GIB,
    block_size: 2 << 20,
    chunk_ratio: 2048,
    sha_vhdx: "a4bf6f9ccaaf8f90b0e9a5b6f964e2b21ca3a9b1675c3a92e73206b04cfb1fbf",
    sha_raw: "fc5c91bfd8f7ee388cf482dc7eb6cef64b39a7e1bd043516ee95887b839f2b78",
    allocated_blocks: 32,
    creator: "Microsoft Windows 10.0.17763.0",
    data_write_guid: Some("b298d413-f67e-412a-9a72-c7c7fc9b6cb5"),
    ..DEFAULTS
};

const NTFS_FIXED: Fx = Fx {
    rel: "dfvfs/ntfs-fixed.vhdx.gz",
    disk_type: DiskType::Fixed,
    virtual_size: 4 * MIB,
    block_size: 2 << 20,
    chunk_ratio: 2048,
    sha_vhdx: "2d58839711c9e2e22b6a4b36fe97fb307bf790a519b80e962dc17bdad678e3b9",
    sha_raw: "5237dd895f38052344e2ef35a207fe9df08cd18d17b6ea857a1b93cc475e1f2e",
    allocated_blocks: 2,
    creator: W10_19041,
    virtual_disk_id: Some("c2583c64-de7e-4c9f-8613-216fc8613fb3"),
    ..DEFAULTS
};

const NTFS_DYNAMIC: Fx = Fx {
    rel: "dfvfs/ntfs-dynamic.vhdx.gz",
    virtual_size: 4 * MIB,
    sha_vhdx: "e02e32fbacdc0b02e5fe435b9527099627cc2c4d72e68f263d202bc9fa413763",
    sha_raw: "b92731f8e4bf3532418444d22a9086823a8122569500acd09cd8d2ce20eb98e9",
    allocated_blocks: 1,
    creator: W10_19041,
    virtual_disk_id: Some("affecd75-3b3c-44dc-a069-b929c0de6005"),
    ..DEFAULTS
};

const NTFS_PARENT: Fx = Fx {
    rel: "dfvfs/ntfs-parent.vhdx.gz",
    disk_type: DiskType::Fixed,
    virtual_size: 4 * MIB,
    block_size: 2 << 20,
    chunk_ratio: 2048,
    sha_vhdx: "4495375f1e92bb6ef1937f7cb4ccf56ca1c1c491c0df56280a8c1905a3d58d44",
    sha_raw: "c5523065bc6ef82267be56c5f8888e2876ead8ba7edba2a65a3da8b076231b68",
    allocated_blocks: 2,
    creator: W10_19041,
    virtual_disk_id: Some("d62318cc-56ce-42e2-898d-16e1d1c9843e"),
    data_write_guid: Some("7584f8fb-36d3-4091-afb5-b1afe587bfa8"),
    ..DEFAULTS
};

/// Chain hash with NTFS_PARENT.
const NTFS_DIFFERENTIAL: Fx = Fx {
    rel: "dfvfs/ntfs-differential.vhdx.gz",
    disk_type: DiskType::Differencing,
    virtual_size: 4 * MIB,
    block_size: 2 << 20,
    chunk_ratio: 2048,
    sha_vhdx: "65bd9e21c9f14d476df67b8fd104a61234ef693e70330c0e6b9878b10aff92ac",
    sha_raw: "1ef1fb5360247aa7d36a38415bc7bf6e1e52f62af5e6bd1283815e82584c7efc",
    allocated_blocks: 2,
    creator: W10_19041,
    virtual_disk_id: Some("d62318cc-56ce-42e2-898d-16e1d1c9843e"),
    ..DEFAULTS
};

const FAT_PARENT: Fx = Fx {
    rel: "dfvfs/fat-parent.vhdx.gz",
    disk_type: DiskType::Fixed,
    virtual_size: 4 * MIB,
    block_size: 2 << 20,
    chunk_ratio: 2048,
    sha_vhdx: "4b2a44f5db544a36c234c2901263107ca18618988c41f6a92b9e264ca8c955ff",
    sha_raw: "2d1954fec68faefe81dd3687282a9b387bf8417f6d2cf0da3825fa1445b64cfb",
    allocated_blocks: 2,
    creator: W10_19041,
    virtual_disk_id: Some("cc2e9979-9ee7-417c-a2cd-4a3fa18795fb"),
    data_write_guid: Some("f88d4d92-6fcc-408d-9bef-9b7c89f15c89"),
    ..DEFAULTS
};

/// Chain hash with FAT_PARENT.
const FAT_DIFFERENTIAL: Fx = Fx {
    rel: "dfvfs/fat-differential.vhdx.gz",
    disk_type: DiskType::Differencing,
    virtual_size: 4 * MIB,
    block_size: 2 << 20,
    chunk_ratio: 2048,
    sha_vhdx: "6e8d17db1be6c7390c2123f4c46ce57e9ad8391b2a74841973e0d07293bcb873",
    sha_raw: "a538161f34bc44c12bf9a542ce9218741c62728723ea18d0e4f6ea92e9f32e93",
    allocated_blocks: 1,
    creator: W10_19041,
    virtual_disk_id: Some("cc2e9979-9ee7-417c-a2cd-4a3fa18795fb"),
    ..DEFAULTS
};

const EXT2: Fx = Fx {
    rel: "dfvfs/ext2.vhdx.gz",
    virtual_size: 4 * MIB,
    block_size: 8 << 20,
    physical_sector_size: 512,
    chunk_ratio: 512,
    sha_vhdx: "d729323aafb2a7473e39abe9382076014d99a0c16e8333b9decbd81d355b1087",
    sha_raw: "a6c2f0e39afe6c6ab432ca5465349fcefe8dc944398e97b2d957d3f89dbb5d80",
    allocated_blocks: 1,
    creator: "QEMU v5.2.0",
    virtual_disk_id: Some("92f22ac3-6a03-3e4e-8c95-ae03377b7007"),
    ..DEFAULTS
};

const PASSWORDS: &[u8] = b"place,user,password \r\nbank,joesmith,superrich \r\nalarm system,-,1234 \r\ntreasure chest,-,1111 \r\nuber secret laire,admin,admin \r\n";

fn guid(s: &str) -> Guid {
    s.parse().unwrap()
}

/// Checks what a read-only open reports against the table.
fn check_info(fx: &Fx, disk: &Disk) {
    let info = disk.info().unwrap();
    let name = fx.rel;
    assert_eq!(info.disk_type, fx.disk_type, "{name}: type");
    assert_eq!(info.virtual_size, fx.virtual_size, "{name}: virtual size");
    assert_eq!(info.block_size, fx.block_size, "{name}: block size");
    assert_eq!(info.logical_sector_size, fx.logical_sector_size, "{name}: logical sector size");
    assert_eq!(info.physical_sector_size, fx.physical_sector_size, "{name}: physical sector size");
    assert_eq!(info.chunk_ratio, fx.chunk_ratio, "{name}: chunk ratio");
    // The format's own formula, independent of the table.
    assert_eq!(
        info.chunk_ratio,
        (1u64 << 23) * fx.logical_sector_size as u64 / fx.block_size as u64,
        "{name}: chunk ratio rule"
    );
    assert_eq!(info.allocated_blocks, fx.allocated_blocks, "{name}: allocated payload blocks");
    assert_eq!(info.creator, fx.creator, "{name}: creator");
    assert_eq!(info.log_replayed, fx.dirty_log, "{name}: log replayed");
    assert!(!disk.is_writable());
    if let Some(id) = fx.virtual_disk_id {
        assert_eq!(info.virtual_disk_id, guid(id), "{name}: virtual disk id");
    }
    if let Some(g) = fx.data_write_guid {
        assert_eq!(info.data_write_guid, guid(g), "{name}: DataWriteGuid");
    }
    if let Some(seq) = fx.header_sequence {
        assert_eq!(info.header_sequence_number, seq, "{name}: current header sequence number");
    }
    assert_eq!(info.parent_locator.is_some(), fx.disk_type == DiskType::Differencing, "{name}: parent locator");
}

/// Opens a standalone fixture read-only and checks it against the table: the
/// container hash before and after (a read-only open writes nothing), the
/// reported geometry, and the hash of the whole virtual disk. Returns the
/// fixture (kept alive) for extra checks.
fn check_standalone(fx: &Fx, extra: impl FnOnce(&Disk)) {
    let Some(f) = fixture(fx.rel) else { return };
    assert_eq!(sha256_file(&f.path), fx.sha_vhdx, "{}: decompressed container hash", fx.rel);
    {
        let disk = Disk::open(&f.path).unwrap_or_else(|e| panic!("{}: open: {e}", fx.rel));
        check_info(fx, &disk);
        assert_eq!(sha256_disk(&disk), fx.sha_raw, "{}: sha256 of the whole virtual disk", fx.rel);
        extra(&disk);
    }
    assert_eq!(sha256_file(&f.path), fx.sha_vhdx, "{}: a read-only open changed the file", fx.rel);
}

/// The MBR disk id (offset 440) and the first partition entry (type, LBA, sectors).
fn mbr(disk: &Disk) -> (u32, [(u8, u32, u32); 4]) {
    let s = read_vec(disk, 0, 512);
    assert_eq!(&s[510..512], &[0x55, 0xAA], "MBR boot signature");
    let id = u32::from_le_bytes(s[440..444].try_into().unwrap());
    let parts = [0, 1, 2, 3].map(|i| {
        let e = &s[446 + 16 * i..462 + 16 * i];
        (e[4], u32::from_le_bytes(e[8..12].try_into().unwrap()), u32::from_le_bytes(e[12..16].try_into().unwrap()))
    });
    (id, parts)
}

// ---------------------------------------------------------------- clean standalone fixtures

#[test]
fn qemu_iotest_dynamic_1g() {
    check_standalone(&DYNAMIC_1G, |d| {
        // iotest 064's content: 0xA5 to 33 MiB, 0x96 to 66 MiB, then zeros.
        let around = |at: u64| read_vec(d, at - 1, 2);
        assert_eq!(around(33 * MIB), [0xA5, 0x96]);
        assert_eq!(around(66 * MIB), [0x96, 0x00]);
    });
}

#[test]
fn qemu_disk2vhd_equal_header_sequence_numbers() {
    check_standalone(&DISK2VHD, |d| {
        let (id, parts) = mbr(d);
        assert_eq!(id, 0x192a32ad);
        assert_eq!(parts[0], (0x06, 128, 518144));
    });
}

#[test]
fn discutils_btrfs() {
    check_standalone(&BTRFS, |d| assert_eq!(mbr(d).0, 0xefef665c));
}

#[test]
fn discutils_swap_10g() {
    check_standalone(&SWAP, |d| assert_eq!(read_vec(d, 4086, 10), b"SWAPSPACE2"));
}

// The 10 GiB DiscUtils fixtures decompress to 170–680 MiB containers and hash
// 10 GiB of virtual disk each; each takes a few seconds in release mode.
#[test]
fn discutils_xfs_10g() {
    check_standalone(&XFS, |d| {
        // Protective MBR, then the GPT header with the published disk GUID.
        assert_eq!(mbr(d).1[0].0, 0xEE);
        let gpt = read_vec(d, 512, 92);
        assert_eq!(&gpt[0..8], b"EFI PART");
        let disk_guid = Guid::from_bytes_le(gpt[56..72].try_into().unwrap());
        assert_eq!(disk_guid, guid("B5B919CD-923B-4983-9A0A-24CAF5CC6FDC"));
    });
}

#[test]
fn discutils_xfs5_10g() {
    check_standalone(&XFS5, |d| {
        let (id, parts) = mbr(d);
        assert_eq!(id, 0xbaea0e87);
        assert_eq!(parts[0].1, 2048);
    });
}

#[test]
fn discutils_lvm2_10g_unmapped_blocks() {
    check_standalone(&LVM2, |d| {
        assert_eq!(mbr(d).1[0].0, 0xEE);
        assert_eq!(&read_vec(d, 512, 8), b"EFI PART");
    });
}

#[test]
fn dissect_fixed() {
    check_standalone(&DISSECT_FIXED, |d| {
        assert_eq!(
            sha256_bytes(&read_vec(d, 0, 512)),
            "06c37267f8b87089c014939d244107c245465869dd6559d2a21231c041dbc363"
        );
        let (id, parts) = mbr(d);
        assert_eq!(id, 0x8cad3d8a);
        assert_eq!(parts[0], (0x07, 128, 14336));
        // The 0xFF run spans [0x91000, 0x263006), across the 2 MiB block boundary.
        let run = read_vec(d, 0x91000 - 1, 0x263006 - 0x91000 + 2);
        assert_ne!(run[0], 0xFF);
        assert!(run[1..run.len() - 1].iter().all(|&b| b == 0xFF));
        assert_ne!(run[run.len() - 1], 0xFF);
    });
}

#[test]
fn dissect_dynamic() {
    check_standalone(&DISSECT_DYNAMIC, |d| {
        assert_eq!(
            sha256_bytes(&read_vec(d, 0, 512)),
            "9dcbf838cda438cc391e1bf42cce72a200d2ba5bc599a888c619a7733dcb5dbe"
        );
        assert_eq!(read_vec(d, 0x200000, 512), vec![0xFF; 512]);
    });
}

#[test]
fn dfvfs_ntfs_fixed() {
    check_standalone(&NTFS_FIXED, |d| {
        let (id, parts) = mbr(d);
        assert_eq!(id, 0xaf25a45d);
        assert_eq!((parts[0].1, parts[0].2), (128, 6016));
        assert_eq!(read_vec(d, 0x293D28, PASSWORDS.len()), PASSWORDS);
    });
}

#[test]
fn dfvfs_ntfs_dynamic() {
    check_standalone(&NTFS_DYNAMIC, |d| assert_eq!(read_vec(d, 0x293D28, PASSWORDS.len()), PASSWORDS));
}

#[test]
fn dfvfs_ntfs_parent() {
    check_standalone(&NTFS_PARENT, |d| assert_ne!(read_vec(d, 0x293D28, PASSWORDS.len()), PASSWORDS));
}

#[test]
fn dfvfs_fat_parent() {
    check_standalone(&FAT_PARENT, |d| {
        let (id, parts) = mbr(d);
        assert_eq!(id, 0x2598ad56);
        assert_eq!((parts[0].0, parts[0].1), (0x0e, 128));
        assert_ne!(read_vec(d, 0x18400, PASSWORDS.len()), PASSWORDS);
    });
}

#[test]
fn dfvfs_ext2_made_by_qemu() {
    check_standalone(&EXT2, |d| assert_eq!(read_vec(d, 1024 + 56, 2), [0x53, 0xEF]));
}

// ---------------------------------------------------------------- dirty logs

/// Read-only open of a dirty-log fixture: replayed in memory (published hash,
/// `log_replayed`), file byte-identical afterwards. And the log is what
/// makes that difference: a copy whose headers' LogGuid the test clears
/// (resealing them with its own CRC-32C) is read by the library as
/// SOURCES.md says a reader that ignores the log sees the file
/// (`ignored_log_sha`: libvhdi's and dissect's hash).
fn dirty_log_read_only(fx: &Fx, ignored_log_sha: &str) {
    check_standalone(fx, |d| assert!(d.info().unwrap().log_replayed));
    let Some(f) = fixture(fx.rel) else { return };
    let copy = f.dir.path().join("log-cleared.vhdx");
    sparse_copy(&f.path, &copy);
    clear_log_guid(&copy);
    let d = Disk::open(&copy).unwrap_or_else(|e| panic!("{}: open with the LogGuid cleared: {e}", fx.rel));
    assert!(!d.info().unwrap().log_replayed, "{}: nothing to replay once the LogGuid is cleared", fx.rel);
    assert_eq!(sha256_disk(&d), ignored_log_sha, "{}: the disk with its log ignored", fx.rel);
}

/// Sets both headers' LogGuid (bytes 48..64) of `path` to zero and reseals
/// their CRC-32C (bytes 4..8), from the format's layout.
fn clear_log_guid(path: &Path) {
    use crate::common::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    for at in [64u64 << 10, 128 << 10] {
        let mut h = vec![0u8; 4096];
        file.read_exact_at(&mut h, at).unwrap();
        assert!(parse_header(&h).is_ok(), "header at {at:#x} valid before");
        h[48..64].fill(0);
        h[4..8].fill(0);
        let crc = crc32c(&h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(&h, at).unwrap();
    }
}

/// A writable open on a copy replays the log in place. Afterwards: a fresh
/// read-only open sees a clean log and the same disk; the current header's
/// LogGuid is zero and both headers are valid; the only bytes that changed
/// are the headers and those inside `bat_sector` (what the log rewrote);
/// `qemu-img check` finds nothing; and QEMU's own replay of another copy
/// converts to the same raw disk our read of the untouched original gives.
fn dirty_log_writable(fx: &Fx, bat_changes: (u64, u64)) {
    let Some(f) = fixture(fx.rel) else { return };
    let ours = f.dir.path().join("ours.vhdx");
    sparse_copy(&f.path, &ours);
    let before = current_header(&f.path);
    assert_ne!(before.log_guid, [0u8; 16], "{}: fixture should have a dirty log", fx.rel);
    {
        let disk = Disk::open_writable(&ours).unwrap_or_else(|e| panic!("{}: writable open: {e}", fx.rel));
        assert!(disk.info().unwrap().log_replayed, "{}: writable open did not replay the log", fx.rel);
        // Spot check here; the whole disk is hashed after reopening below.
        let mut probe = vec![0u8; 1 << 20];
        let fresh = Disk::open(&f.path).unwrap();
        for at in [0, 17 << 20, fx.virtual_size / 2, fx.virtual_size - (1 << 20)] {
            disk.read_at(&mut probe, at).unwrap();
            assert_eq!(probe, read_vec(&fresh, at, 1 << 20), "{}: at {at:#x} after in-place replay", fx.rel);
        }
        disk.close().unwrap();
    }
    // Headers: both valid, log clean, sequence advanced, FileWriteGuid new.
    let hs = read_headers(&ours);
    for (i, h) in hs.iter().enumerate() {
        assert!(h.is_ok(), "{}: header {} invalid after replay: {:?}", fx.rel, i + 1, h);
    }
    let after = current_header(&ours);
    assert_eq!(after.log_guid, [0u8; 16], "{}: LogGuid not cleared after replay", fx.rel);
    assert!(after.sequence_number > before.sequence_number);
    assert_ne!(after.file_write_guid, before.file_write_guid, "{}: FileWriteGuid must change", fx.rel);
    assert_eq!(after.data_write_guid, before.data_write_guid, "{}: replay alone is not a data change", fx.rel);

    // Only headers and the replayed BAT bytes differ from the original file.
    let headers = [(64 << 10, (64 << 10) + 4096), (128 << 10, (128 << 10) + 4096)];
    for (lo, hi) in differing_ranges(&f.path, &ours) {
        let inside = |r: &(u64, u64)| r.0 <= lo && hi <= r.1;
        assert!(
            headers.iter().any(inside) || inside(&bat_changes),
            "{}: replay changed file bytes [{lo:#x}, {hi:#x}) outside the headers and {bat_changes:x?}",
            fx.rel
        );
    }

    let reopened = Disk::open(&ours).unwrap();
    assert!(!reopened.info().unwrap().log_replayed, "{}: log still dirty after an in-place replay", fx.rel);
    assert_eq!(sha256_disk(&reopened), fx.sha_raw, "{}: disk after reopening the replayed copy", fx.rel);
    drop(reopened);

    if !qemu() {
        return;
    }
    qemu_check_clean(&ours);
    // QEMU as the oracle: its own replay, converted to raw, equals our read of
    // the original (replayed in memory).
    let theirs = f.dir.path().join("theirs.vhdx");
    sparse_copy(&f.path, &theirs);
    qemu_img(&["check", "-f", "vhdx", "-r", "all", theirs.to_str().unwrap()]);
    let raw = f.dir.path().join("theirs.raw");
    qemu_convert_to_raw(&theirs, &raw);
    let original = Disk::open(&f.path).unwrap();
    assert_disk_equals_raw_file(&original, &raw);
    // And QEMU reads our replayed copy identically.
    let raw2 = f.dir.path().join("ours.raw");
    qemu_convert_to_raw(&ours, &raw2);
    assert_files_equal(&raw, &raw2);
}

#[test]
fn qemu_dirtylog_read_only_replays_in_memory() {
    dirty_log_read_only(&DIRTYLOG, "cc3d67a6bfea2ec826b5d0f77ac755bdbca18479ed13f64ee8b3d3f0d64859ca");
}

#[test]
fn qemu_dirtylog_writable_replays_in_place() {
    // SOURCES.md: replay changes only the headers and BAT bytes 0x200088–0x20008B.
    dirty_log_writable(&DIRTYLOG, (0x200088, 0x20008C));
}

#[test]
fn qemu_dirtylog_content_boundary() {
    let Some(f) = fixture(DIRTYLOG.rel) else {
        return;
    };
    let d = Disk::open(&f.path).unwrap();
    // After replay block 17 is present: 0xA5 up to 0x1200000, zeros after.
    assert_eq!(read_vec(&d, 0x10FFFFF, 2), [0xA5, 0xA5]);
    assert_eq!(read_vec(&d, 0x11FFFFF, 2), [0xA5, 0x00]);
}

#[test]
fn discutils_log_replay_read_only_replays_in_memory() {
    dirty_log_read_only(&LOG_REPLAY, "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14");
}

#[test]
fn discutils_log_replay_writable_replays_in_place() {
    // SOURCES.md: only the headers and the BAT sector at 0x300000 change.
    dirty_log_writable(&LOG_REPLAY, (0x300000, 0x301000));
}

#[test]
fn discutils_log_replay_partitions() {
    let Some(f) = fixture(LOG_REPLAY.rel) else {
        return;
    };
    let d = Disk::open(&f.path).unwrap();
    let (id, parts) = mbr(&d);
    assert_eq!(id, 0x95f1addd);
    assert_eq!(parts[0], (0x83, 2048, 204800));
    assert_eq!(parts[1], (0x83, 206848, 409600));
}

// ---------------------------------------------------------------- differencing

/// Opens `child_fx` with `parent_fx` passed explicitly and checks the chain.
fn check_chain(parent_fx: &Fx, child_fx: &Fx, passwords_at: u64) {
    let Some(f) = fixture(parent_fx.rel) else {
        return;
    };
    let child_path = fixture_into(child_fx.rel, f.dir.path());
    assert_eq!(sha256_file(&child_path), child_fx.sha_vhdx, "{}: decompressed container hash", child_fx.rel);
    let parent = Disk::open(&f.path).unwrap();
    check_info(parent_fx, &parent);
    let child = OpenOptions::new()
        .parent(parent)
        .open(&child_path)
        .unwrap_or_else(|e| panic!("{}: open with parent: {e}", child_fx.rel));
    check_info(child_fx, &child);
    assert!(child.parent().is_some());
    assert_eq!(sha256_disk(&child), child_fx.sha_raw, "{}: sha256 of the chain", child_fx.rel);
    assert_eq!(read_vec(&child, passwords_at, PASSWORDS.len()), PASSWORDS, "{}: passwords.txt", child_fx.rel);
    // The locator names the parent by its DataWriteGuid and relative path.
    let loc = child.info().unwrap().parent_locator.unwrap();
    let get = |k: &str| loc.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let linkage = get("parent_linkage").expect("parent_linkage");
    assert_eq!(guid(linkage.trim_matches(['{', '}'])), guid(parent_fx.data_write_guid.unwrap()));
    let parent_name = Path::new(parent_fx.rel).file_stem().unwrap().to_str().unwrap();
    assert_eq!(get("relative_path").as_deref(), Some(format!(".\\{parent_name}").as_str()));
    drop(child);
    assert_eq!(sha256_file(&child_path), child_fx.sha_vhdx, "{}: a read-only open changed the child", child_fx.rel);
    assert_eq!(sha256_file(&f.path), parent_fx.sha_vhdx, "{}: a read-only open changed the parent", parent_fx.rel);

    // Opened without a parent argument, the child either finds its parent
    // beside it through the relative locator (and reads the same chain) or
    // reports that it did not.
    match Disk::open(&child_path) {
        Ok(d) => assert_eq!(sha256_disk(&d), child_fx.sha_raw, "{}: chain through the locator", child_fx.rel),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ParentNotFound, "{}: {e}", child_fx.rel),
    }
}

#[test]
fn dfvfs_ntfs_differencing_chain() {
    check_chain(&NTFS_PARENT, &NTFS_DIFFERENTIAL, 0x293D28);
}

#[test]
fn dfvfs_fat_differencing_chain() {
    check_chain(&FAT_PARENT, &FAT_DIFFERENTIAL, 0x18400);
}

#[test]
fn dfvfs_wrong_parent_is_a_mismatch() {
    let Some(f) = fixture(NTFS_PARENT.rel) else {
        return;
    };
    let child_path = fixture_into(FAT_DIFFERENTIAL.rel, f.dir.path());
    let wrong = Disk::open(&f.path).unwrap();
    let err = OpenOptions::new().parent(wrong).open(&child_path).expect_err("a parent with the wrong DataWriteGuid");
    assert_eq!(err.kind(), ErrorKind::ParentMismatch, "{err}");
}

#[test]
fn dfvfs_differencing_child_without_parent() {
    // Child-only view: sectors the child does not hold read as zeros. The
    // passwords.txt sectors are among the ones the child holds.
    let Some(f) = fixture(NTFS_DIFFERENTIAL.rel) else {
        return;
    };
    let child = OpenOptions::new().without_parent().open(&f.path).unwrap();
    assert!(child.parent().is_none());
    assert_eq!(read_vec(&child, 0x293D28, PASSWORDS.len()), PASSWORDS);
    // The MBR is the parent's; the child-only view has zeros there.
    assert_eq!(read_vec(&child, 0, 512), vec![0u8; 512]);
    drop(child);
    assert_eq!(sha256_file(&f.path), NTFS_DIFFERENTIAL.sha_vhdx);
    // Without its parent a child may be opened for writing (metadata
    // operations), but it takes no data writes: they would need the parent's
    // sectors.
    let copy = f.dir.path().join("copy.vhdx");
    sparse_copy(&f.path, &copy);
    let mut w = OpenOptions::new().without_parent().writable(true).open(&copy).unwrap();
    let err = w.write_at(b"x", 0x293D28).expect_err("a data write without the parent");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    w.close().unwrap();
    let child = OpenOptions::new().without_parent().open(&copy).unwrap();
    assert_eq!(read_vec(&child, 0x293D28, PASSWORDS.len()), PASSWORDS);
}

/// We write into the Windows-made child (through its existing sector bitmap)
/// with unaligned writes, some into sectors that still come from the parent
/// (read-modify-write from the parent). The chain then reads as the published
/// chain plus our writes; the parent file is untouched.
#[test]
fn dfvfs_write_into_windows_differencing_child() {
    let Some(f) = fixture(NTFS_PARENT.rel) else { return };
    let child_path = fixture_into(NTFS_DIFFERENTIAL.rel, f.dir.path());
    let mut model = {
        let child = OpenOptions::new().parent(Disk::open(&f.path).unwrap()).open(&child_path).unwrap();
        read_vec(&child, 0, NTFS_DIFFERENTIAL.virtual_size as usize)
    };
    assert_eq!(sha256_bytes(&model), NTFS_DIFFERENTIAL.sha_raw);
    let writes: [(u64, usize); 6] = [
        (10, 5),                // inside the parent's MBR sector
        (0x293D28 + 3, 20),     // inside passwords.txt, a sector the child holds
        (0x1FFFF0, 40),         // across the 2 MiB block boundary
        (0x100000 - 300, 4096), // sub-sector at both ends
        (0x3FFFFF, 1),          // the last byte
        (0x280000, 3 * 512),    // whole sectors
    ];
    {
        let parent = Disk::open(&f.path).unwrap();
        let mut child = OpenOptions::new().writable(true).parent(parent).open(&child_path).unwrap();
        for (i, &(off, len)) in writes.iter().enumerate() {
            let data = pattern(i as u64 + 100, len);
            child.write_at(&data, off).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
            assert_eq!(read_vec(&child, off, len), data);
        }
        child.close().unwrap();
    }
    assert_eq!(sha256_file(&f.path), NTFS_PARENT.sha_vhdx, "writing the child changed the parent");
    let child = OpenOptions::new().parent(Disk::open(&f.path).unwrap()).open(&child_path).unwrap();
    assert!(read_vec(&child, 0, model.len()) == model, "the chain after our writes differs from the model");
    assert_eq!(current_header(&child_path).log_guid, [0u8; 16]);
}

#[test]
fn dissect_differencing_child_only() {
    let fx = &DISSECT_DIFFERENCING;
    let Some(f) = fixture(fx.rel) else { return };
    assert_eq!(sha256_file(&f.path), fx.sha_vhdx);
    let err = Disk::open(&f.path).expect_err("the parent is not published");
    assert_eq!(err.kind(), ErrorKind::ParentNotFound, "{err}");

    let disk = OpenOptions::new().without_parent().open(&f.path).unwrap();
    check_info(fx, &disk);
    let loc = disk.info().unwrap().parent_locator.unwrap();
    let linkage = loc.iter().find(|(k, _)| k == "parent_linkage").map(|(_, v)| v.clone()).unwrap();
    assert_eq!(guid(linkage.trim_matches(['{', '}'])), guid("ff34003b-11ed-4cf8-a166-b2be05e20b80"));

    // The sector bitmaps mark 6200 sectors in 179 runs, from [0x100000,
    // 0x101000) to [0x1B753C000, 0x1B7540000).
    let map = disk.map().unwrap();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for m in map.iter().filter(|m| matches!(m.extent, Extent::Data { .. })) {
        match runs.last_mut() {
            Some(r) if r.1 == m.offset => r.1 += m.length,
            _ => runs.push((m.offset, m.offset + m.length)),
        }
    }
    assert!(map.iter().all(|m| !matches!(m.extent, Extent::Zero)), "a child's NOT_PRESENT blocks map to the parent");
    assert_eq!(runs.iter().map(|r| r.1 - r.0).sum::<u64>(), 6200 * 512);
    assert_eq!(runs.len(), 179);
    assert_eq!(runs[0], (0x100000, 0x101000));
    assert_eq!(*runs.last().unwrap(), (0x1B753C000, 0x1B7540000));
    assert_eq!(map.iter().map(|m| m.length).sum::<u64>(), fx.virtual_size);

    assert_eq!(sha256_disk(&disk), fx.sha_raw, "child-only view of the whole 8 GiB disk");
    drop(disk);
    assert_eq!(sha256_file(&f.path), fx.sha_vhdx, "a read-only open changed the file");
}
