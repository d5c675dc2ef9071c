//! NTFS: which clusters the filesystem does not use, from its `$Bitmap`
//! file, read offline through the virtual disk with the `ntfs` crate.
//!
//! Only a clean volume is read: its `$Volume` information must not carry
//! the dirty flag (set while Windows has it mounted, or after a crash until
//! chkdsk ran). The bitmap is streamed, a chunk at a time, and must cover
//! every cluster of the volume; anything the crate cannot read leaves the
//! volume alone, with its message as the reason.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use std::io::{Read, Seek, SeekFrom};

use ntfs::structured_values::NtfsVolumeFlags;
use ntfs::{KnownNtfsFileRecordNumber, Ntfs, NtfsReadSeek};

use super::{FreeRuns, FsUsage, Probe};
use crate::error::Result;
use crate::ops::ranges;
use crate::BlockDevice;

/// `[start, start + len)` of a disk as a file, for the `ntfs` crate.
struct Part<'a> {
    dev: &'a dyn BlockDevice,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Part<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.dev.read_at(&mut buf[..n], self.start + self.pos).map_err(|e| std::io::Error::other(e.to_string()))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Part<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Whether `[start, start + len)` begins with an NTFS boot sector.
pub(crate) fn detect(dev: &dyn BlockDevice, start: u64, len: u64) -> Result<bool> {
    if len < 512 {
        return Ok(false);
    }
    let mut b = vec![0u8; 512];
    dev.read_at(&mut b, start)?;
    Ok(&b[3..11] == b"NTFS    " && b[510] == 0x55 && b[511] == 0xAA)
}

/// The free space of the NTFS volume in `[start, start + len)`, as byte
/// ranges from `start`; or why it is left alone.
pub(crate) fn examine(dev: &dyn BlockDevice, start: u64, len: u64) -> Result<Probe> {
    let skip = |reason: String| Ok(Probe::Skipped { kind: Some("ntfs"), reason });
    let mut fs = Part { dev, start, len, pos: 0 };
    let ntfs = match Ntfs::new(&mut fs) {
        Ok(n) => n,
        Err(e) => return skip(format!("its boot sector cannot be read: {e}")),
    };
    let size = ntfs.size();
    let cluster = ntfs.cluster_size() as u64;
    if size > len || cluster == 0 {
        return skip(format!("its boot sector describes {size} bytes, more than the {len}-byte partition"));
    }
    match ntfs.volume_info(&mut fs) {
        Ok(info) if info.flags().contains(NtfsVolumeFlags::IS_DIRTY) => return skip(String::from(
            "it is marked dirty (in use by Windows, or not checked since a crash): run chkdsk, or ntfsfix -d, first",
        )),
        Ok(_) => {}
        Err(e) => return skip(format!("its $Volume information cannot be read: {e}")),
    }
    let clusters = size / cluster;
    let free = match read_bitmap(&ntfs, &mut fs, clusters) {
        Ok(f) => f,
        Err(reason) => return skip(reason),
    };
    let free_clusters: u64 = free.iter().map(|&(_, n)| n).sum();
    Ok(Probe::Known(FsUsage {
        kind: "ntfs",
        size,
        used: size - free_clusters * cluster,
        block_size: cluster,
        free: ranges::normalize(free.into_iter().map(|(c, n)| (c * cluster, n * cluster)).collect()),
    }))
}

/// The free clusters, as runs `(first, count)`, streamed from `$Bitmap`.
fn read_bitmap(ntfs: &Ntfs, fs: &mut Part<'_>, clusters: u64) -> core::result::Result<Vec<(u64, u64)>, String> {
    let why = |what: &str, e: ntfs::NtfsError| format!("its {what} cannot be read: {e}");
    let file = ntfs.file(fs, KnownNtfsFileRecordNumber::Bitmap as u64).map_err(|e| why("$Bitmap record", e))?;
    let item = match file.data(fs, "") {
        Some(item) => item.map_err(|e| why("$Bitmap data", e))?,
        None => return Err(String::from("its $Bitmap has no data")),
    };
    let attr = item.to_attribute().map_err(|e| why("$Bitmap attribute", e))?;
    if attr.value_length().saturating_mul(8) < clusters {
        return Err(format!("its $Bitmap ({} bytes) does not cover its {clusters} clusters", attr.value_length()));
    }
    let mut value = attr.value(fs).map_err(|e| why("$Bitmap value", e))?;
    let mut runs = FreeRuns::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut c = 0u64;
    while c < clusters {
        let want = ((clusters - c).div_ceil(8) as usize).min(buf.len());
        value.read_exact(fs, &mut buf[..want]).map_err(|e| why("$Bitmap", e))?;
        for &byte in &buf[..want] {
            for bit in 0..8 {
                if c >= clusters {
                    break;
                }
                runs.mark(c, byte >> bit & 1 == 0);
                c += 1;
            }
        }
    }
    Ok(runs.finish(clusters))
}
