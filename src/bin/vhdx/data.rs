//! `create`, `read` and `write`: making an image and moving bytes in and out.
//!
//! Reads and writes stream in chunks of at most [`CHUNK`] bytes, so a
//! request of any length runs in bounded memory.

use std::io::{Read, Write};

use std::path::Path;
use vhdx::BlockDevice;

use crate::size::{human, human_exact};
use crate::{io_failure, CliResult, CreateArgs, Failure, InFile, ReadArgs, TypeArg, WriteArgs};

/// The most bytes `read` and `write` hold at once.
pub const CHUNK: usize = 4 << 20;

/// A block size from the command line as the library's `u32`.
pub fn block_size_arg(path: &Path, block_size: u64) -> CliResult<u32> {
    u32::try_from(block_size).map_err(|_| {
        Failure(format!(
            "{}: invalid argument: block size {block_size} is not a power of two from 1 MiB to 256 MiB",
            path.display()
        ))
    })
}

/// The library's out-of-range error for `len` bytes at `offset` of a disk of
/// `size` bytes, when the request is checked before any byte moves.
pub fn check_range(path: &Path, offset: u64, len: u64, size: u64) -> CliResult {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(vhdx::Error::OutOfRange { offset, len, size }).in_file(path),
    }
}

/// `vhdx create FILE --size SIZE [--type …] [--block-size …] [--…-sector-size …]`,
/// or `vhdx create FILE --parent PARENT [--block-size …]`.
pub fn create(args: &CreateArgs) -> CliResult {
    let format = args.format.map(vhdx::ops::convert::ImageFormat::from);
    match format.unwrap_or_else(|| vhdx::ops::convert::ImageFormat::from_path(&args.file)) {
        vhdx::ops::convert::ImageFormat::Vhd => return crate::vhd::create(args),
        vhdx::ops::convert::ImageFormat::Raw if format.is_some() => {
            return Err(Failure(format!("{}: create makes VHDX or VHD images, not raw", args.file.display())))
        }
        _ => {}
    }
    if let Some(parent) = args.parent.as_deref().filter(|p| crate::vhd::is_vhd(p)) {
        return Err(Failure(format!(
            "{}: the parent {} is a VHD: a VHDX's parent is a VHDX (convert it first, or make a .vhd child)",
            args.file.display(),
            parent.display()
        )));
    }
    if let Some(parent) = &args.parent {
        return create_differencing(args, parent);
    }
    let path = args.file.as_path();
    let size = args.size.ok_or_else(|| {
        Failure(format!(
            "{}: --size is required (or --parent PARENT for a differencing disk, which takes its parent's size)",
            path.display()
        ))
    })?;
    let mut options = vhdx::CreateOptions::dynamic(size);
    options.disk_type = args.disk_type.unwrap_or(TypeArg::Dynamic).into();
    if let Some(bs) = args.block_size {
        options = options.block_size(block_size_arg(path, bs)?);
    }
    if let Some(lss) = args.logical_sector_size {
        options = options.logical_sector_size(lss);
    }
    if let Some(pss) = args.physical_sector_size {
        options = options.physical_sector_size(pss);
    }
    let disk = vhdx::Disk::create(path, &options).in_file(path)?;
    let info = disk.info().in_file(path)?;
    disk.close().in_file(path)?;
    outln!(
        "Created {}: {} VHDX, virtual size {}, block size {}, sectors {}/{} (logical/physical)",
        path.display(),
        info.disk_type,
        human_exact(info.virtual_size),
        human(info.block_size as u64),
        info.logical_sector_size,
        info.physical_sector_size,
    )?;
    Ok(())
}

/// `vhdx create CHILD --parent PARENT [--block-size …] [--size SIZE]`: the
/// child takes the parent's size and sector sizes, so options that would set
/// them differently are refused rather than ignored.
fn create_differencing(args: &CreateArgs, parent: &Path) -> CliResult {
    let path = args.file.as_path();
    let refused = [
        ("--type", args.disk_type.is_some()),
        ("--logical-sector-size", args.logical_sector_size.is_some()),
        ("--physical-sector-size", args.physical_sector_size.is_some()),
    ];
    if let Some((option, _)) = refused.iter().find(|(_, given)| *given) {
        return Err(Failure(format!(
            "{}: {option} cannot be used with --parent: a differencing disk takes its type, size and sector sizes \
             from its parent",
            path.display()
        )));
    }
    let block_size = args.block_size.map(|bs| block_size_arg(path, bs)).transpose()?;
    if let Some(size) = args.size {
        // Opened with its own chain: a parent that cannot be read cannot be a parent.
        let parent_size = vhdx::Disk::open(parent).in_file(parent)?.virtual_size();
        if size != parent_size {
            return Err(Failure(format!(
                "{}: --size {} differs from the virtual size of the parent {} ({}); a differencing disk has its \
                 parent's size (leave --size out)",
                path.display(),
                human_exact(size),
                parent.display(),
                human_exact(parent_size)
            )));
        }
    }
    let disk = vhdx::Disk::create_differencing(path, parent, block_size).in_file(path)?;
    let info = disk.info().in_file(path)?;
    let linkage = disk.parent().map(|p| p.data_write_guid());
    disk.close().in_file(path)?;
    outln!(
        "Created {}: differencing VHDX of {}, virtual size {}, block size {}, sectors {}/{} (logical/physical)",
        path.display(),
        parent.display(),
        human_exact(info.virtual_size),
        human(info.block_size as u64),
        info.logical_sector_size,
        info.physical_sector_size,
    )?;
    if let Some(guid) = linkage {
        outln!("Linked to the parent's DataWriteGuid {{{guid}}}; writing to the parent now would break this link.")?;
    }
    Ok(())
}

/// `vhdx read FILE --offset N --length N`: the bytes to stdout.
pub fn read(args: &ReadArgs) -> CliResult {
    let path = args.file.as_path();
    // A VHD or a VHDX (by content), with its chain.
    let disk = vhdx::OpenOptions::new().force_share(args.force_share).open_any(path).in_file(path)?;
    check_range(path, args.offset, args.length, disk.capacity())?;
    let mut buf = vec![0u8; args.length.min(CHUNK as u64) as usize];
    let mut out = std::io::stdout().lock();
    let mut done = 0u64;
    while done < args.length {
        let n = (args.length - done).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..n];
        disk.read_at(chunk, args.offset + done).in_file(path)?;
        match out.write_all(chunk) {
            Ok(()) => {}
            // The reader went away (`| head`): it has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Failure(format!("writing to stdout: {e}"))),
        }
        done += n as u64;
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure(format!("writing to stdout: {e}"))),
        _ => Ok(()),
    }
}

/// Fills `buf` from `input` as far as it goes; returns the count (less than
/// `buf.len()` only at the end of the input).
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `vhdx write FILE --offset N [--input PATH]`: bytes from PATH or stdin.
pub fn write(args: &WriteArgs) -> CliResult {
    let path = args.file.as_path();
    let (mut input, input_name, known_len): (Box<dyn Read>, String, Option<u64>) = match &args.input {
        Some(p) => {
            let file = std::fs::File::open(p).map_err(io_failure(p, "opening the input"))?;
            let meta = file.metadata().map_err(io_failure(p, "reading the input's metadata"))?;
            let len = meta.is_file().then_some(meta.len());
            (Box::new(file), p.display().to_string(), len)
        }
        None => (Box::new(std::io::stdin().lock()), String::from("stdin"), None),
    };
    // A VHD or a VHDX (by content), with its chain.
    let mut disk = vhdx::AnyDisk::open_writable(path).in_file(path)?;
    // Refuse before writing anything when the size is known; stdin is
    // checked chunk by chunk, each check naming the chunk's own length.
    let size = disk.capacity();
    if let Some(len) = known_len {
        check_range(path, args.offset, len, size)?;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = fill(&mut input, &mut buf).map_err(|e| Failure(format!("{input_name}: reading the input: {e}")))?;
        if n == 0 {
            break;
        }
        // Checked before: offset + done is at most the disk's size.
        let at = args.offset + done;
        check_range(path, at, n as u64, size)?;
        disk.write_at(&buf[..n], at).in_file(path)?;
        done += n as u64;
    }
    if done == 0 {
        check_range(path, args.offset, 0, size)?;
    }
    // Durable, and a VHDX's log clean, as a close leaves it (errors reported).
    disk.checkpoint().in_file(path)?;
    drop(disk);
    let unit = if done == 1 { "byte" } else { "bytes" };
    outln!("wrote {done} {unit} at offset {} of {}", args.offset, path.display())?;
    Ok(())
}
