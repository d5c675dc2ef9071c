//! Reference models of a virtual disk the tests build from their own
//! writes: a sparse raw file ([`RawModel`]), and a sparse in-memory byte
//! map that can check a whole [`Disk`] against itself ([`SparseModel`]).

use super::FileExt;
use std::fs::File;
use std::path::PathBuf;

use vhdx::Disk;

use super::compare::{first_difference, read_vec, CHUNK};

/// A sparse raw file used as the reference model of a virtual disk.
pub struct RawModel {
    pub path: PathBuf,
    file: File,
    pub size: u64,
}

impl RawModel {
    pub fn new(path: PathBuf, size: u64) -> RawModel {
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        file.set_len(size).unwrap();
        RawModel { path, file, size }
    }

    pub fn write(&self, data: &[u8], offset: u64) {
        assert!(offset + data.len() as u64 <= self.size, "model write out of range");
        self.file.write_all_at(data, offset).unwrap();
    }

    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset).unwrap();
        buf
    }
}

/// A sparse in-memory model of a large virtual disk: 64 KiB pages, absent = zeros.
pub struct SparseModel {
    pub size: u64,
    pages: std::collections::BTreeMap<u64, Vec<u8>>,
}

const PAGE: u64 = 64 << 10;

impl SparseModel {
    pub fn new(size: u64) -> SparseModel {
        SparseModel { size, pages: Default::default() }
    }

    pub fn write(&mut self, data: &[u8], offset: u64) {
        assert!(offset + data.len() as u64 <= self.size, "model write out of range");
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (page, in_page) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - in_page).min(data.len() - done);
            let p = self.pages.entry(page).or_insert_with(|| vec![0u8; PAGE as usize]);
            p[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (&page, p) in self.pages.range(offset / PAGE..(offset + len as u64).div_ceil(PAGE)) {
            let lo = (page * PAGE).max(offset);
            let hi = ((page + 1) * PAGE).min(offset + len as u64);
            if lo < hi {
                out[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&p[(lo - page * PAGE) as usize..(hi - page * PAGE) as usize]);
            }
        }
        out
    }

    /// Asserts the whole disk equals the model: every byte of the virtual
    /// disk is read and compared, whatever the disk's map says; the map is
    /// also checked to cover the disk and to call zero only what the model
    /// holds as zeros.
    pub fn assert_equals(&self, disk: &Disk) {
        assert_eq!(disk.virtual_size(), self.size, "virtual size");
        let map = disk.map().expect("map");
        let mut covered = 0u64;
        for m in &map {
            assert_eq!(m.offset, covered, "map is not contiguous");
            covered += m.length;
            if m.extent == vhdx::Extent::Zero {
                let end = m.offset + m.length;
                for (&page, p) in self.pages.range(m.offset / PAGE..end.div_ceil(PAGE)) {
                    let lo = (page * PAGE).max(m.offset);
                    let hi = ((page + 1) * PAGE).min(end);
                    let bytes = &p[(lo - page * PAGE) as usize..(hi - page * PAGE) as usize];
                    if let Some(i) = bytes.iter().position(|&b| b != 0) {
                        panic!("the disk maps {:#x} as zero but the model has {:#04x} there", lo + i as u64, bytes[i]);
                    }
                }
            }
        }
        assert_eq!(covered, self.size, "map does not cover the disk");
        let extent_at = |at: u64| map.iter().find(|m| m.offset <= at && at < m.offset + m.length).map(|m| m.extent);
        let mut at = 0;
        while at < self.size {
            let n = (self.size - at).min(CHUNK as u64) as usize;
            let expect = self.read(at, n);
            let got = read_vec(disk, at, n);
            if got != expect {
                let i = first_difference(&got, &expect);
                let where_ = at + i as u64;
                panic!(
                    "disk differs from the model at {where_:#x} ({:?}): disk {:#04x}, model {:#04x}",
                    extent_at(where_),
                    got[i],
                    expect[i]
                );
            }
            at += n as u64;
        }
    }
}
