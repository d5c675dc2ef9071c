//! `serve`: export an image over NBD until the process is killed (or, with
//! `--once`, until the first client disconnects).
//!
//! The server is `vhdx::nbd::Server`: every `NBD_CMD_FLUSH`, every FUA write
//! and the end of every client session are durable, and while no client is
//! connected the file is a cleanly closed image, so killing the server
//! (Ctrl-C, SIGTERM) between clients loses nothing. Killing it while a
//! client is connected loses only what that client wrote since its last
//! flush, as pulling a disk's power does; the image stays consistent (the
//! next writable open replays its log).
//!
//! Clients that stall cannot keep others out: a handshake must be over
//! within `--handshake-timeout` seconds (10), at most `--max-handshakes`
//! connections (16) wait to be served and the one waiting longest is dropped
//! when another arrives, and `--idle-timeout` (off by default) ends sessions
//! that stay silent.

use crate::size::human_exact;
use crate::{CliResult, Failure, InFile, ServeArgs};

/// `vhdx serve FILE [--port N] [--bind ADDR] [--read-only] [--once]
/// [--handshake-timeout S] [--idle-timeout S] [--max-connections N] [--max-handshakes N]`.
pub fn serve(args: &ServeArgs) -> CliResult {
    let path = args.file.as_path();
    let refused = |e: vhdx::Error| -> Failure {
        if !args.read_only && cannot_write(&e) {
            let message = e.in_file(path.display()).to_string();
            Failure(format!("{message}; to serve it without writing, add --read-only"))
        } else {
            Failure(e.in_file(path.display()).to_string())
        }
    };
    // A VHD or a VHDX (by content): writable unless --read-only, a
    // differencing disk with its chain.
    let disk = vhdx::OpenOptions::new().writable(!args.read_only).open_any(path).map_err(refused)?;
    let description = format!(
        "{}: {} {}, {}",
        path.display(),
        disk.disk_type(),
        disk.format().as_str().to_uppercase(),
        human_exact(disk.virtual_size())
    );
    let disk = run(args, disk, description)?;
    disk.close().in_file(path)?;
    Ok(())
}

/// Serves `disk` as `args` say until the server stops; gives the disk back.
fn run<D: vhdx::BlockDevice + Send + Sync + 'static>(args: &ServeArgs, disk: D, description: String) -> CliResult<D> {
    let path = args.file.as_path();
    // Zero means no limit, as the library reads it.
    let options = vhdx::nbd::ServeOptions::default()
        .description(description)
        .read_only(args.read_only)
        .once(args.once)
        .max_connections(args.max_connections as usize)
        .max_handshakes(args.max_handshakes as usize)
        .handshake_timeout(Some(args.handshake_timeout))
        .idle_timeout(Some(args.idle_timeout));
    let server = vhdx::nbd::Server::bind((args.bind.as_str(), args.port), disk, options)
        .map_err(|e| Failure(format!("{}: listening on {}:{}: {e}", path.display(), args.bind, args.port)))?;
    let addr = server.local_addr().map_err(|e| Failure(format!("{}: the listening address: {e}", path.display())))?;
    eprintln!("serving {} on nbd://{addr}/{}", path.display(), if args.read_only { " (read-only)" } else { "" });
    server
        .on_log(|line| eprintln!("{line}"))
        .run()
        .map_err(|e| Failure(format!("{}: serving on {addr}: {e}", path.display())))
}

/// Whether `e` says the file cannot be written (permission, a read-only
/// file system), which `--read-only` would avoid.
fn cannot_write(e: &vhdx::Error) -> bool {
    use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
    match e {
        vhdx::Error::File { inner, .. } => cannot_write(inner),
        vhdx::Error::Open { source, .. } | vhdx::Error::Io { source, .. } => {
            matches!(source.as_std().map(|e| e.kind()), Some(PermissionDenied | ReadOnlyFilesystem))
        }
        vhdx::Error::ReadOnly => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::cannot_write;

    #[test]
    fn files_that_cannot_be_written_are_recognised() {
        let io = |kind| vhdx::IoError::from(std::io::Error::from(kind));
        let open = |kind| vhdx::Error::Open { op: "open", source: io(kind) }.in_file("d.vhdx");
        assert!(cannot_write(&open(std::io::ErrorKind::PermissionDenied)));
        assert!(cannot_write(&open(std::io::ErrorKind::ReadOnlyFilesystem)));
        assert!(!cannot_write(&open(std::io::ErrorKind::NotFound)));
        let replay = vhdx::Error::Io {
            op: "replaying the log",
            offset: 0x10_0000,
            source: io(std::io::ErrorKind::ReadOnlyFilesystem),
        };
        assert!(cannot_write(&replay));
        assert!(!cannot_write(&vhdx::Error::InvalidArgument("bad".into())));
    }
}
