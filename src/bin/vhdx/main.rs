//! `vhdx`: a qemu-img-style command-line tool over the `vhdx` library.
//! Install it with `cargo install --path . --features cli`, or run it from
//! the source tree with `cargo run --release --features cli -- COMMAND …`.
//!
//! ```text
//! vhdx create disk.vhdx --size 10G
//! vhdx create child.vhdx --parent disk.vhdx
//! vhdx info disk.vhdx [--json]
//! vhdx check disk.vhdx [--json]
//! vhdx map disk.vhdx [--json]
//! vhdx read disk.vhdx --offset 1M --length 4K > out.bin
//! vhdx write disk.vhdx --offset 1M --input in.bin
//! vhdx convert disk.vhdx disk.raw
//! vhdx tree dir/ [--json]
//! vhdx merge child.vhdx [--depth N] [--preserve-siblings | --force]
//! vhdx set-parent child.vhdx moved/disk.vhdx
//! vhdx serve disk.vhdx [--port 10809] [--bind 127.0.0.1] [--read-only] [--once]
//!     [--handshake-timeout 10] [--idle-timeout 0] [--max-connections 8] [--max-handshakes 16]
//! vhdx resize disk.vhdx --size 20G [--allow-shrink]
//! vhdx discard disk.vhdx --offset 1G --length 512M
//! vhdx compact disk.vhdx
//! vhdx changes child.vhdx [--json]
//! vhdx merge-siblings disk.vhdx a.vhdx b.vhdx [--prefer a.vhdx] [--dry-run]
//! ```
//!
//! Every failure exits with status 1 and one line `error: …` on stderr that
//! names the file concerned. Nothing that depends on the input panics.
//!
//! Images are locked while a command uses them (as QEMU locks them, see
//! `vhdx::io::lock`): a command that writes is refused while any other
//! process has the image open, one that reads while another writes it. The
//! read-only commands (info, check, map, read, tree, changes, convert's
//! source) take `-U` / `--force-share` to look at an image in use anyway.
//!
//! Layout: `main.rs` parses the command line and reports failures; each
//! subcommand lives in its own function in `inspect.rs` (info, check, map),
//! `data.rs` (create, read, write), `convert.rs`, `diff.rs` (differencing
//! chains: tree, merge, set-parent), `siblings.rs` (changes,
//! merge-siblings), `maintain.rs` (resize, discard, compact), `serve.rs`
//! (NBD); `size.rs` parses and prints byte counts. Unit tests (run by `cargo test`) cover the size
//! parser and the zero-skipping copy.

/// `println!` for the commands: a failed write to stdout is a [`Failure`]
/// instead of a panic, and a reader that went away (`| head`) ends the output
/// quietly. Evaluates to a [`CliResult`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

mod convert;
mod data;
mod diff;
mod inspect;
mod maintain;
mod serve;
mod siblings;
mod size;
mod vhd;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command-line tool for Microsoft VHDX virtual disks.
#[derive(Parser, Debug)]
#[command(name = "vhdx", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new fixed or dynamic VHDX image, or a differencing one (--parent).
    Create(CreateArgs),
    /// Show the parameters of an image.
    Info(InfoArgs),
    /// Check an image for consistency (read-only unless --repair).
    Check(CheckArgs),
    /// Copy virtual bytes to stdout.
    Read(ReadArgs),
    /// Write bytes from a file or stdin into the virtual disk.
    Write(WriteArgs),
    /// Convert between VHDX and raw images, leaving zeros unallocated.
    Convert(ConvertArgs),
    /// Show where the virtual disk's bytes come from (like `qemu-img map`).
    Map(MapArgs),
    /// Show a differencing chain, or every image of a directory as a tree.
    Tree(TreeArgs),
    /// Merge a differencing disk into an ancestor (diskpart `merge vdisk depth=N`).
    Merge(MergeArgs),
    /// Point a differencing disk at its parent's new location.
    SetParent(SetParentArgs),
    /// Export the virtual disk over NBD (qemu, nbd-client) until killed.
    Serve(ServeArgs),
    /// Change the virtual size (grow; shrink only over zeros unless --allow-shrink).
    Resize(ResizeArgs),
    /// Discard a range: it reads as zeros, whole blocks give their space back.
    Discard(DiscardArgs),
    /// Give back the space of zero and discarded blocks and truncate the file.
    Compact(CompactArgs),
    /// List the sectors a differencing disk holds itself (its change set).
    Changes(siblings::ChangesArgs),
    /// Merge several children of one parent into it at once, conflicts found first.
    MergeSiblings(siblings::MergeSiblingsArgs),
}

/// Arguments of `vhdx resize`.
#[derive(Args, Debug)]
pub struct ResizeArgs {
    /// The image (any type; a differencing disk needs its parent).
    pub file: PathBuf,
    /// The new virtual size: a multiple of the logical sector size (10G, 512M…).
    #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true, required_unless_present = "to_minimum")]
    pub size: Option<u64>,
    /// Shrink to the smallest size that keeps every partition (or the
    /// filesystem of a disk without a table), as Resize-VHD -ToMinimumSize
    #[arg(long, conflicts_with = "size")]
    pub to_minimum: bool,
    /// Shrink even when the removed range holds data, which is discarded.
    #[arg(long)]
    pub allow_shrink: bool,
    /// Resize even though differencing disks made from the image then no
    /// longer open (their parent's DataWriteGuid changes).
    #[arg(long)]
    pub force: bool,
    /// Look for such children in this directory too (besides the image's
    /// own); repeatable.
    #[arg(long = "search-dir", value_name = "DIR")]
    pub search_dirs: Vec<PathBuf>,
}

/// Arguments of `vhdx discard`.
#[derive(Args, Debug)]
pub struct DiscardArgs {
    /// The image (opened for writing).
    pub file: PathBuf,
    /// Virtual offset of the first byte (bytes, 0x…, or with a suffix).
    #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true)]
    pub offset: u64,
    /// Number of bytes (bytes, 0x…, or with a suffix).
    #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true)]
    pub length: u64,
}

/// Arguments of `vhdx compact`.
#[derive(Args, Debug)]
pub struct CompactArgs {
    /// The image (dynamic or differencing).
    pub file: PathBuf,
    /// Read the guest's partition table and filesystems (ext2/3/4) and give
    /// back the blocks in their free space too (auto), or only blocks of
    /// zeros (none)
    #[arg(long, value_enum, default_value_t = FilesystemArg::Auto)]
    pub filesystem: FilesystemArg,
    /// Change nothing: report what would be given back
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--filesystem`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilesystemArg {
    /// Read the filesystems.
    Auto,
    /// Zeros only.
    None,
}

/// Arguments of `vhdx create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The image to create (must not exist).
    pub file: PathBuf,
    /// Virtual size: bytes, or with a binary suffix (10G, 512M, 64KiB).
    /// Required unless --parent is given (then it must equal the parent's).
    #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true)]
    pub size: Option<u64>,
    /// Make a differencing disk of this parent: size and sector sizes come
    /// from it; unwritten sectors read from it.
    #[arg(long)]
    pub parent: Option<PathBuf>,
    /// Fixed (all blocks allocated now) or dynamic (allocated on first write)
    /// [default: dynamic]. Not with --parent.
    #[arg(long = "type", value_enum)]
    pub disk_type: Option<TypeArg>,
    /// Payload block size: a power of two from 1M to 256M [default: 32M; 2M
    /// with --parent].
    #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true)]
    pub block_size: Option<u64>,
    /// Logical sector size: 512 or 4096 [default: 512]. Not with --parent.
    #[arg(long)]
    pub logical_sector_size: Option<u32>,
    /// Physical sector size: 512 or 4096 [default: 4096]. Not with --parent.
    #[arg(long)]
    pub physical_sector_size: Option<u32>,
    /// vhdx or vhd [default: vhd for a .vhd name, else vhdx]. A VHD has
    /// 512-byte sectors, blocks of 512K to 256M [default 2M], and a VHD
    /// parent.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

/// Arguments of `vhdx info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The image.
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Open the image and its parents without locking them, even while
    /// another process writes to them (like `qemu-img -U`); what is read may
    /// then be inconsistent.
    #[arg(short = 'U', long)]
    pub force_share: bool,
}

/// Arguments of `vhdx check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The image.
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Mend what is safe to mend (replay a dirty log, rewrite a damaged header
    /// or region table copy, clear reserved fields), then check again. Never
    /// changes what the disk presents.
    #[arg(long)]
    pub repair: bool,
    /// Open the image and its parents without locking them, even while
    /// another process writes to them (like `qemu-img -U`); what is read may
    /// then be inconsistent.
    #[arg(short = 'U', long, conflicts_with = "repair")]
    pub force_share: bool,
}

/// Arguments of `vhdx read`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The image.
    pub file: PathBuf,
    /// Virtual offset of the first byte (bytes, 0x…, or with a suffix).
    #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true)]
    pub offset: u64,
    /// Number of bytes to read (bytes, 0x…, or with a suffix).
    #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true)]
    pub length: u64,
    /// Open the image and its parents without locking them, even while
    /// another process writes to them (like `qemu-img -U`); what is read may
    /// then be inconsistent.
    #[arg(short = 'U', long)]
    pub force_share: bool,
}

/// Arguments of `vhdx write`.
#[derive(Args, Debug)]
pub struct WriteArgs {
    /// The image (opened for writing).
    pub file: PathBuf,
    /// Virtual offset of the first byte (bytes, 0x…, or with a suffix).
    #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true)]
    pub offset: u64,
    /// Where the bytes come from [default: stdin].
    #[arg(long)]
    pub input: Option<PathBuf>,
}

/// Arguments of `vhdx convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The source image: VHDX or VHD (told apart by content), or raw
    /// (`--input-format raw` or a .raw/.img name).
    pub src: PathBuf,
    /// The image to write (must not exist unless --force).
    pub dst: PathBuf,
    /// Format of SRC [default: raw for .raw/.img names, else vhdx or vhd by content].
    #[arg(long, value_enum)]
    pub input_format: Option<Format>,
    /// Format of DST [default: raw for .raw/.img names, vhd for .vhd, else vhdx].
    #[arg(long, value_enum)]
    pub output_format: Option<Format>,
    /// Type of a VHDX or VHD DST [default: dynamic].
    #[arg(long = "type", value_enum)]
    pub disk_type: Option<TypeArg>,
    /// Block size of a VHDX DST: a power of two from 1M to 256M [default:
    /// 32M]; of a dynamic VHD DST: 512K to 256M [default: 2M].
    #[arg(long, value_parser = size::parse_size, allow_hyphen_values = true)]
    pub block_size: Option<u64>,
    /// Logical sector size of a VHDX DST [default: the source's; 512 for raw].
    #[arg(long)]
    pub logical_sector_size: Option<u32>,
    /// Physical sector size of a VHDX DST [default: the source's; 4096 for raw].
    #[arg(long)]
    pub physical_sector_size: Option<u32>,
    /// Replace DST if it exists (only once the new image is complete; an
    /// image of SRC's chain is never replaced).
    #[arg(long)]
    pub force: bool,
    /// Skip flushing DST to stable storage at the end (as `qemu-img convert`
    /// does by default): faster, but DST may be incomplete after a crash.
    #[arg(long)]
    pub no_sync: bool,
    /// Read SRC (and its parents) without locking it, even while another
    /// process writes to it (like `qemu-img convert -U`); the copy may then
    /// be inconsistent.
    #[arg(short = 'U', long)]
    pub force_share: bool,
    /// Make a VHD Azure takes as an uploaded disk: fixed, the virtual size
    /// rounded up to a whole MiB, the footer as Windows writes it.
    #[arg(long)]
    pub azure: bool,
    /// Convert the differencing SRC alone onto PARENT, its parent already
    /// converted to DST's format (as `Convert-VHD -ParentPath`): DST is a
    /// differencing image over PARENT holding only SRC's own sectors.
    /// Without it a chain is flattened.
    #[arg(long, value_name = "PARENT", conflicts_with_all = ["azure", "disk_type"])]
    pub parent: Option<PathBuf>,
}

/// Arguments of `vhdx map`.
#[derive(Args, Debug)]
pub struct MapArgs {
    /// The image.
    pub file: PathBuf,
    /// Print a JSON array like `qemu-img map --output=json`.
    #[arg(long)]
    pub json: bool,
    /// Open the image and its parents without locking them, even while
    /// another process writes to them (like `qemu-img -U`); what is read may
    /// then be inconsistent.
    #[arg(short = 'U', long)]
    pub force_share: bool,
}

/// Arguments of `vhdx tree`.
#[derive(Args, Debug)]
pub struct TreeArgs {
    /// An image (its chain, and its children in its directory) or a
    /// directory (every .vhdx/.avhdx image in it, as a forest).
    pub path: PathBuf,
    /// Print one JSON object instead of the drawing.
    #[arg(long)]
    pub json: bool,
    /// Open the image and its parents without locking them, even while
    /// another process writes to them (like `qemu-img -U`); what is read may
    /// then be inconsistent.
    #[arg(short = 'U', long)]
    pub force_share: bool,
}

/// Arguments of `vhdx merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The differencing disk to merge. It keeps presenting the same bytes,
    /// now through the target.
    pub child: PathBuf,
    /// How many levels up the target is: 1 = the parent, 2 = the grandparent…
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub depth: u64,
    /// Keep other children of the changed images valid: copy into each what
    /// it would lose, then re-link it.
    #[arg(long, conflicts_with = "force")]
    pub preserve_siblings: bool,
    /// Merge even though other children of the changed images then break
    /// (what diskpart does).
    #[arg(long)]
    pub force: bool,
    /// Look for siblings in this directory too (besides the child's and the
    /// target's directories); repeatable.
    #[arg(long = "search-dir", value_name = "DIR")]
    pub search_dirs: Vec<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `vhdx set-parent`.
#[derive(Args, Debug)]
pub struct SetParentArgs {
    /// The differencing disk to re-link.
    pub child: PathBuf,
    /// Its parent at its new location.
    pub parent: PathBuf,
    /// Link even when PARENT's DataWriteGuid is not the one CHILD was made
    /// from (CHILD's content may then change; it gets a new DataWriteGuid).
    #[arg(long)]
    pub ignore_id_mismatch: bool,
}

/// Arguments of `vhdx serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The image (a differencing disk is served with its chain).
    pub file: PathBuf,
    /// TCP port; 0 picks a free one (the address is printed on stderr).
    #[arg(long, default_value_t = 10809)]
    pub port: u16,
    /// Address to listen on; 0.0.0.0 or :: for every interface.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Open the image read-only and refuse writes.
    #[arg(long)]
    pub read_only: bool,
    /// Exit after the first client disconnects.
    #[arg(long)]
    pub once: bool,
    /// Seconds a client may take over its whole handshake before it is
    /// dropped (0: no limit).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = size::parse_seconds)]
    pub handshake_timeout: std::time::Duration,
    /// Seconds an established session may stay silent before the server
    /// ends it, flushing its writes (0, the default: never; a mounted file
    /// system may be idle for hours).
    #[arg(long, value_name = "SECONDS", default_value = "0", value_parser = size::parse_seconds)]
    pub idle_timeout: std::time::Duration,
    /// The most clients in transmission at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_connections: u64,
    /// The most connections waiting to be served (in the handshake, or for a
    /// free session); when another arrives, the one waiting longest is dropped.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_handshakes: u64,
}

/// The type of a new VHDX image.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeArg {
    /// Blocks allocated on first write.
    Dynamic,
    /// Every block allocated at creation.
    Fixed,
}

impl From<TypeArg> for vhdx::DiskType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::Dynamic => vhdx::DiskType::Dynamic,
            TypeArg::Fixed => vhdx::DiskType::Fixed,
        }
    }
}

/// An image format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Microsoft VHDX.
    Vhdx,
    /// The virtual disk's bytes, nothing else.
    Raw,
    /// Microsoft VHD (version 1).
    Vhd,
}

/// Why a command failed: the text printed after `error: `, naming the file.
#[derive(Debug)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The result of a subcommand.
pub type CliResult<T = ()> = Result<T, Failure>;

/// Attaching the file's path to library and I/O errors.
pub trait InFile<T> {
    /// The error, prefixed with `path` unless the library already named a file.
    fn in_file(self, path: &Path) -> CliResult<T>;
}

impl<T> InFile<T> for vhdx::Result<T> {
    fn in_file(self, path: &Path) -> CliResult<T> {
        self.map_err(|e| Failure(e.in_file(path.display()).to_string()))
    }
}

/// An I/O error while doing `what` to `path`, as a [`Failure`].
pub fn io_failure<'a>(path: &'a Path, what: &'a str) -> impl FnOnce(std::io::Error) -> Failure + 'a {
    move |e| Failure(format!("{}: {what}: {e}", path.display()))
}

/// Writes `text` to stdout (see [`outln!`]).
pub fn emit(text: &str) -> CliResult {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure(format!("writing to stdout: {e}"))),
        _ => Ok(()),
    }
}

/// Opens an image read-only; a differencing disk is opened on its own
/// (sectors it does not hold are reported, not read), which is what
/// `info` and `map` need. With `force_share` (`-U`) it is not locked.
pub fn open_alone(path: &Path, force_share: bool) -> CliResult<vhdx::Disk> {
    vhdx::OpenOptions::new().without_parent().force_share(force_share).open(path).in_file(path)
}

/// How the read-only commands open files: locked, or not with `-U`.
pub fn file_opener(force_share: bool) -> vhdx::io::FileOpener {
    if force_share {
        vhdx::io::FileOpener::force_share()
    } else {
        vhdx::io::FileOpener::default()
    }
}

fn run(command: Command) -> CliResult {
    match command {
        Command::Create(args) => data::create(&args),
        Command::Info(args) if vhd::is_vhd(&args.file) => vhd::info(&args),
        Command::Info(args) => inspect::info(&args),
        Command::Check(args) => inspect::check(&args),
        Command::Read(args) => data::read(&args),
        Command::Write(args) => data::write(&args),
        Command::Convert(args) => convert::convert(&args),
        Command::Map(args) => inspect::map(&args),
        Command::Tree(args) => diff::tree(&args),
        Command::Merge(args) => diff::merge(&args),
        Command::SetParent(args) => diff::set_parent(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Resize(args) => maintain::resize(&args),
        Command::Discard(args) => maintain::discard(&args),
        Command::Compact(args) => maintain::compact(&args),
        Command::Changes(args) => siblings::changes(&args),
        Command::MergeSiblings(args) => siblings::merge_siblings(&args),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not failures; usage errors exit 1 like
            // every other failure (clap's own choice would be 2).
            let code = if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
            let _ = e.print();
            return code;
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}
