//! [`convert`] on paths: the source opened (through its chain), the
//! destination checked, the output written to a temporary file beside the
//! destination and renamed into place when complete (see
//! [`crate::ops::replace`]).

use alloc::string::String;
use alloc::vec::Vec;
use std::path::{Path, PathBuf};

#[cfg(unix)]
use super::parallel;
use super::{copy_runs, nonzero_candidates, ConvertOptions, ConvertReport, ImageFormat};
use crate::error::{Error, IoContext, Result};
use crate::format::vhd::VhdType;
use crate::io::{FileStorage, Storage};
use crate::ops::replace::Replacement;
use crate::vhd::{VhdCreateOptions, VhdDisk};
use crate::{BlockDevice, Disk};

/// A file whose flushes do nothing: the output of an unsynced convert.
struct NoSync(FileStorage);

impl Storage for NoSync {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> core::result::Result<(), crate::error::IoError> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> core::result::Result<(), crate::error::IoError> {
        self.0.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> core::result::Result<(), crate::error::IoError> {
        Ok(())
    }
    fn len(&self) -> core::result::Result<u64, crate::error::IoError> {
        self.0.len()
    }
    fn set_len(&mut self, len: u64) -> core::result::Result<(), crate::error::IoError> {
        self.0.set_len(len)
    }
    fn allocate(&mut self, offset: u64, len: u64) -> core::result::Result<(), crate::error::IoError> {
        self.0.allocate(offset, len)
    }
}

/// Whether two files are one: the same device and inode (a hard link, a
/// path through a symbolic link) on Unix; elsewhere canonical paths decide.
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// Refuses `dst` when it is one of the files of `chain` (the source and its
/// ancestors), by canonical path or by file identity.
fn refuse_chain_member(dst: &Path, chain: &[PathBuf]) -> Result<()> {
    let (Ok(dst_meta), Ok(dst_canon)) = (std::fs::metadata(dst), dst.canonicalize()) else {
        return Ok(());
    };
    for (level, image) in chain.iter().enumerate() {
        let same = image.canonicalize().is_ok_and(|c| c == dst_canon)
            || std::fs::metadata(image).is_ok_and(|m| same_file(&m, &dst_meta));
        if same {
            let what = match level {
                0 => String::from("the source image itself"),
                1 => alloc::format!("the parent of the source ({})", image.display()),
                n => alloc::format!("an ancestor of the source, {n} levels up ({})", image.display()),
            };
            return Err(Error::Refused(alloc::format!(
                "this is {what}; the source is read through it, so it cannot be replaced (write elsewhere)"
            ))
            .in_file(dst.display()));
        }
    }
    Ok(())
}

/// Where the output goes: `dst`, or the file a symbolic link `dst` names;
/// refused when it exists and may not be replaced.
fn destination(dst: &Path, chain: &[PathBuf], overwrite: bool) -> Result<PathBuf> {
    let Ok(link) = std::fs::symlink_metadata(dst) else {
        return Ok(dst.to_path_buf());
    };
    refuse_chain_member(dst, chain)?;
    if !overwrite {
        return Err(Error::Refused(String::from(
            "the file already exists; nothing was written (set `overwrite` to replace it)",
        ))
        .in_file(dst.display()));
    }
    // Replace the file a link points to, not the link.
    let target = if link.file_type().is_symlink() { dst.canonicalize().unwrap_or(dst.into()) } else { dst.into() };
    match std::fs::symlink_metadata(&target) {
        Ok(m) if !m.is_file() => {
            Err(Error::Refused(String::from("not a regular file; refusing to replace it")).in_file(dst.display()))
        }
        _ => Ok(target),
    }
}

/// Converts the image at `src` into an image at `dst`, as `options` say;
/// see the [module docs](super). An existing `dst` is refused unless
/// [`ConvertOptions::overwrite`], and an image of the source's chain
/// always ([`Error::Refused`] either way, before any work). The output is
/// written to a temporary file beside `dst` and takes its name only once
/// complete: when this fails, or the process is killed, `dst` is as it was.
///
/// ```no_run
/// use vhdx::ops::convert::{convert, ConvertOptions};
/// use vhdx::DiskType;
/// // A flattened, fixed copy of a differencing chain:
/// let options = ConvertOptions::default().disk_type(DiskType::Fixed);
/// convert("child.vhdx".as_ref(), "standalone.vhdx".as_ref(), &options)?;
/// // And a sparse raw image of it, replacing an older one:
/// let options = ConvertOptions::default().overwrite(true);
/// convert("standalone.vhdx".as_ref(), "disk.raw".as_ref(), &options)?;
/// # Ok::<(), vhdx::Error>(())
/// ```
pub fn convert(src: &Path, dst: &Path, options: &ConvertOptions) -> Result<ConvertReport> {
    convert_with_progress(src, dst, options, &mut |_, _| {})
}

/// [`convert`], calling `progress(done, total)` in virtual bytes.
pub fn convert_with_progress(
    src: &Path,
    dst: &Path,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertReport> {
    let in_format = options.input_format.unwrap_or_else(|| ImageFormat::detect(src));
    let out_format = options.output_format.unwrap_or_else(|| ImageFormat::from_path(dst));
    if let Some(parent) = &options.parent {
        return convert_child(src, dst, Path::new(parent), in_format, out_format, options, progress);
    }
    let in_file = |e: Error| e.in_file(src.display());
    let out_file = |e: Error| e.in_file(dst.display());
    if out_format == ImageFormat::Raw
        && (options.disk_type != crate::DiskType::Dynamic
            || options.block_size.is_some()
            || options.logical_sector_size.is_some()
            || options.physical_sector_size.is_some())
    {
        return Err(Error::invalid(
            "the type and block size apply only to a VHDX or VHD output, the sector sizes only to a VHDX output",
        ));
    }
    if out_format == ImageFormat::Vhd
        && (options.logical_sector_size.is_some_and(|s| s != 512)
            || options.physical_sector_size.is_some_and(|s| s != 512 && s != 4096))
    {
        return Err(Error::invalid("a VHD has 512-byte sectors"));
    }
    if options.azure
        && (out_format != ImageFormat::Vhd
            || options.disk_type != crate::DiskType::Dynamic
            || options.block_size.is_some())
    {
        return Err(Error::invalid("--azure makes a fixed VHD: it takes a VHD output and no --type or --block-size"));
    }
    if options.disk_type == crate::DiskType::Differencing {
        return Err(Error::invalid("convert makes fixed or dynamic images (a differencing source is flattened)"));
    }

    enum Source {
        Vhdx(alloc::boxed::Box<Disk>),
        Vhd(alloc::boxed::Box<VhdDisk>),
        Raw(FileStorage, u64),
    }
    let source = match in_format {
        ImageFormat::Vhdx => {
            Source::Vhdx(alloc::boxed::Box::new(crate::OpenOptions::new().force_share(options.force_share).open(src)?))
        }
        ImageFormat::Vhd => Source::Vhd(alloc::boxed::Box::new(VhdDisk::open(src)?)),
        ImageFormat::Raw => {
            // Only a regular file (see `FileStorage::open`), locked like an image.
            let file =
                if options.force_share { FileStorage::open_force_share(src) } else { FileStorage::open(src, false) }
                    .map_err(|source| Error::opening("open", source, false))
                    .map_err(in_file)?;
            let len = file.len().during("sizing the raw image", 0).map_err(in_file)?;
            Source::Raw(file, len)
        }
    };
    let chain: Vec<PathBuf> = match &source {
        Source::Vhdx(d) => {
            let mut paths: Vec<PathBuf> = d.chain_paths().into_iter().map(PathBuf::from).collect();
            paths[0] = src.to_path_buf();
            paths
        }
        Source::Vhd(d) => {
            let mut paths: Vec<PathBuf> = d.chain_paths().into_iter().map(PathBuf::from).collect();
            paths[0] = src.to_path_buf();
            paths
        }
        Source::Raw(..) => alloc::vec![src.to_path_buf()],
    };
    let target = destination(dst, &chain, options.overwrite)?;
    let (size, runs, lss, pss) = match &source {
        Source::Vhdx(d) => (
            d.virtual_size(),
            nonzero_candidates(d).map_err(in_file)?,
            d.logical_sector_size(),
            d.physical_sector_size(),
        ),
        Source::Vhd(d) => (d.virtual_size(), d.data_ranges().map_err(in_file)?, 512, 4096),
        Source::Raw(_, len) => (*len, alloc::vec![(0, *len)], 512, 4096),
    };
    let read_shared = |buf: &mut [u8], at: u64| -> Result<()> {
        match &source {
            Source::Vhdx(d) => d.read_at(buf, at),
            Source::Vhd(d) => d.read_at(buf, at),
            Source::Raw(f, _) => f.read_exact_at(buf, at).during("reading the raw image", at),
        }
        .map_err(in_file)
    };
    let mut read = read_shared;
    let mut create = crate::CreateOptions::dynamic(size)
        .logical_sector_size(options.logical_sector_size.unwrap_or(lss))
        .physical_sector_size(options.physical_sector_size.unwrap_or(pss));
    if out_format == ImageFormat::Vhdx {
        create.disk_type = options.disk_type;
        if let Some(bs) = options.block_size {
            create = create.block_size(bs);
        }
        if size % create.logical_sector_size as u64 != 0 {
            return Err(Error::invalid(alloc::format!(
                "the source's size ({size} bytes) is not a multiple of the {}-byte logical sector size",
                create.logical_sector_size
            ))
            .in_file(src.display()));
        }
        create.validate().map_err(out_file)?;
    }
    let vhd_options = {
        let base = match options.disk_type {
            _ if options.azure => {
                VhdCreateOptions::fixed(size.next_multiple_of(crate::format::MIB)).as_windows_writes()
            }
            crate::DiskType::Fixed => VhdCreateOptions::fixed(size),
            _ => VhdCreateOptions::dynamic(size),
        };
        base.block_size(options.block_size.unwrap_or(crate::format::vhd::DEFAULT_BLOCK_SIZE))
    };
    let out_size = if out_format == ImageFormat::Vhd { vhd_options.size() } else { size };
    if out_format == ImageFormat::Vhd && !options.azure && size % 512 != 0 {
        return Err(Error::invalid(alloc::format!(
            "the source's size ({size} bytes) is not a multiple of the VHD's 512-byte sector"
        ))
        .in_file(src.display()));
    }

    // Everything is checked: write the new image beside the destination.
    let temp = Replacement::create(&target).during("creating a temporary file beside it", 0).map_err(out_file)?;
    let file = temp.file().try_clone().during("opening the temporary file", 0).map_err(out_file)?;
    let storage: alloc::boxed::Box<dyn Storage> = if options.sync {
        alloc::boxed::Box::new(FileStorage::new(file))
    } else {
        alloc::boxed::Box::new(NoSync(FileStorage::new(file)))
    };
    let written = match out_format {
        #[cfg(unix)]
        ImageFormat::Raw => (|| {
            // Several requests in flight, and direct I/O where the file takes it.
            let file = temp.file();
            file.set_len(size).during("sizing the file", size)?;
            let direct = parallel::open_direct(temp.path(), file);
            let written =
                parallel::copy_to_raw(size, &runs, &read_shared, file, direct.as_ref(), options.sync, progress)?;
            // (`commit` syncs the file when `options.sync`.)
            Ok((written, None, String::from("raw")))
        })(),
        #[cfg(not(unix))]
        ImageFormat::Raw => (|| {
            let mut storage = storage;
            storage.set_len(size).during("sizing the file", size)?;
            let written = copy_runs(
                size,
                &runs,
                &mut read,
                &mut |buf, at| storage.write_all_at(buf, at).during("writing the raw image", at),
                progress,
            )?;
            storage.flush().during("flushing", 0)?;
            Ok((written, None, String::from("raw")))
        })(),
        ImageFormat::Vhd => (|| {
            let mut disk = VhdDisk::create_on(storage, &vhd_options)?;
            let kind = match disk.disk_type() {
                VhdType::Fixed => "vhd, fixed",
                _ => "vhd, dynamic",
            };
            let written = copy_runs(size, &runs, &mut read, &mut |buf, at| disk.write_at(buf, at), progress)?;
            disk.flush()?;
            let kind_type = if options.disk_type == crate::DiskType::Fixed || options.azure {
                crate::DiskType::Fixed
            } else {
                crate::DiskType::Dynamic
            };
            drop(disk.into_storage()?);
            Ok((written, Some(kind_type), String::from(kind)))
        })(),
        ImageFormat::Vhdx => (|| {
            let mut disk = Disk::create_on(storage, &create, None)?;
            let kind = alloc::format!("vhdx, {}", disk.disk_type());
            let written = copy_runs(size, &runs, &mut read, &mut |buf, at| disk.write_at(buf, at), progress)?;
            disk.close()?;
            Ok((written, Some(create.disk_type), kind))
        })(),
    };
    // On failure, dropping `temp` removes the temporary file.
    let (bytes_written, output_type, output_kind) = written.map_err(out_file)?;
    temp.commit(options.sync).during("renaming the finished image into place", 0).map_err(out_file)?;
    Ok(ConvertReport {
        input_format: in_format,
        output_format: out_format,
        output_type,
        virtual_size: out_size,
        bytes_written,
        output_kind,
    })
}

/// [`convert_with_progress`] with [`ConvertOptions::parent`]: the
/// differencing source `src`, read alone, becomes a differencing image at
/// `dst` over `parent`, holding the sectors `src` holds itself (a VHDX's
/// blocks that read as zeros instead of the parent are written as zeros).
fn convert_child(
    src: &Path,
    dst: &Path,
    parent: &Path,
    in_format: ImageFormat,
    out_format: ImageFormat,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertReport> {
    let in_file = |e: Error| e.in_file(src.display());
    let out_file = |e: Error| e.in_file(dst.display());
    if out_format == ImageFormat::Raw || in_format == ImageFormat::Raw {
        return Err(Error::invalid("a parent is given to convert a differencing VHDX or VHD onto it, not a raw image"));
    }
    if options.azure
        || options.disk_type != crate::DiskType::Dynamic
        || options.logical_sector_size.is_some()
        || options.physical_sector_size.is_some()
    {
        return Err(Error::invalid(
            "with a parent the output is a differencing image: its type, sector sizes and size are the parent's",
        ));
    }
    // The source alone: its own sectors, and its parent left unopened.
    enum Child {
        Vhdx(alloc::boxed::Box<Disk>),
        Vhd(alloc::boxed::Box<VhdDisk>),
    }
    let child = match in_format {
        ImageFormat::Vhd => Child::Vhd(alloc::boxed::Box::new(VhdDisk::open_without_parent(src, false)?)),
        _ => Child::Vhdx(alloc::boxed::Box::new(
            crate::OpenOptions::new().without_parent().force_share(options.force_share).open(src)?,
        )),
    };
    let (differencing, size, map) = match &child {
        Child::Vhdx(d) => (d.disk_type() == crate::DiskType::Differencing, d.virtual_size(), d.map().map_err(in_file)?),
        Child::Vhd(d) => (d.disk_type() == VhdType::Differencing, d.virtual_size(), d.map().map_err(in_file)?),
    };
    if !differencing {
        return Err(Error::invalid("a parent is given, but this is not a differencing image (convert it without one)")
            .in_file(src.display()));
    }
    let parent_format = ImageFormat::detect(parent);
    if parent_format != out_format {
        return Err(Error::invalid(alloc::format!(
            "the parent {} is a {}, the output a {}: a chain's images have one format",
            parent.display(),
            parent_format.as_str(),
            out_format.as_str()
        ))
        .in_file(dst.display()));
    }
    let target = destination(dst, &[src.to_path_buf(), parent.to_path_buf()], options.overwrite)?;
    // What the child decides itself: its data, and (a VHDX's ZERO blocks)
    // zeros in place of the parent's bytes.
    let runs: Vec<(u64, u64, bool)> = map
        .iter()
        .filter_map(|e| match e.extent {
            crate::Extent::Data { .. } => Some((e.offset, e.length, true)),
            crate::Extent::Zero => Some((e.offset, e.length, false)),
            _ => None,
        })
        .collect();
    let total: u64 = runs.iter().map(|r| r.1).sum();
    let temp = Replacement::create(&target).during("creating a temporary file beside it", 0).map_err(out_file)?;
    let file = temp.file().try_clone().during("opening the temporary file", 0).map_err(out_file)?;
    let storage: alloc::boxed::Box<dyn Storage> = if options.sync {
        alloc::boxed::Box::new(FileStorage::new(file))
    } else {
        alloc::boxed::Box::new(NoSync(FileStorage::new(file)))
    };
    let written = (|| -> Result<(u64, String)> {
        let mut out: alloc::boxed::Box<dyn BlockDevice> = match out_format {
            ImageFormat::Vhd => {
                let p = VhdDisk::open(parent)?;
                if p.virtual_size() != size {
                    return Err(size_mismatch(parent, p.virtual_size(), size));
                }
                let (locators, absolute) = crate::chain::vhd::vhd_locators(dst, parent)?;
                let bs = options.block_size.unwrap_or(crate::format::vhd::DEFAULT_BLOCK_SIZE);
                let disk = VhdDisk::create_differencing_with(storage, p.footer(), &absolute, &locators, bs, None)?;
                alloc::boxed::Box::new(disk.with_parent(p)?)
            }
            _ => {
                let p = crate::OpenOptions::new().open(parent)?;
                if p.virtual_size() != size {
                    return Err(size_mismatch(parent, p.virtual_size(), size));
                }
                let locator = crate::chain::locator_for(dst, parent, &p.data_write_guid())?;
                alloc::boxed::Box::new(Disk::create_differencing_on(storage, p, locator, options.block_size, None)?)
            }
        };
        let mut buf = alloc::vec![0u8; 1 << 20];
        let mut done = 0u64;
        progress(0, total);
        for &(start, len, data) in &runs {
            let mut pos = start;
            while pos < start + len {
                let n = (start + len - pos).min(buf.len() as u64) as usize;
                let chunk = &mut buf[..n];
                if data {
                    match &child {
                        Child::Vhdx(d) => d.read_at(chunk, pos),
                        Child::Vhd(d) => d.read_at(chunk, pos),
                    }
                    .map_err(in_file)?;
                } else {
                    chunk.fill(0);
                }
                out.write_at(chunk, pos)?;
                pos += n as u64;
                done += n as u64;
                progress(done, total);
            }
        }
        out.checkpoint()?;
        let kind = alloc::format!("{}, differencing", out_format.as_str());
        Ok((done, kind))
    })();
    let (bytes_written, output_kind) = written.map_err(out_file)?;
    temp.commit(options.sync).during("renaming the finished image into place", 0).map_err(out_file)?;
    Ok(ConvertReport {
        input_format: in_format,
        output_format: out_format,
        output_type: Some(crate::DiskType::Differencing),
        virtual_size: size,
        bytes_written,
        output_kind,
    })
}

fn size_mismatch(parent: &Path, parent_size: u64, size: u64) -> Error {
    Error::invalid(alloc::format!(
        "the parent {} is {parent_size} bytes, the source {size}: it is not the source's parent converted",
        parent.display()
    ))
}
