//! `vhdx`: a qemu-img-style command-line tool over the `vhdx` library.
//!
//! ```text
//! cargo run --release --example vhdx -- create disk.vhdx --size 10G
//! cargo run --release --example vhdx -- info disk.vhdx [--json]
//! cargo run --release --example vhdx -- check disk.vhdx [--json]
//! cargo run --release --example vhdx -- map disk.vhdx [--json]
//! cargo run --release --example vhdx -- read disk.vhdx --offset 1M --length 4K > out.bin
//! cargo run --release --example vhdx -- write disk.vhdx --offset 1M --input in.bin
//! cargo run --release --example vhdx -- convert disk.vhdx disk.raw
//! ```
//!
//! Every failure exits with status 1 and one line `error: …` on stderr that
//! names the file concerned. Nothing that depends on the input panics.
//!
//! Layout: `main.rs` parses the command line and reports failures; each
//! subcommand lives in its own function in `inspect.rs` (info, check, map),
//! `data.rs` (create, read, write) or `convert.rs`; `size.rs` parses and
//! prints byte counts. Unit tests (`cargo test --examples`) cover the size
//! parser and the zero-skipping copy.

mod convert;
mod data;
mod inspect;
mod size;

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
    /// Create a new fixed or dynamic VHDX image.
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
}

/// Arguments of `vhdx create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The image to create (must not exist).
    pub file: PathBuf,
    /// Virtual size: bytes, or with a binary suffix (10G, 512M, 64KiB).
    #[arg(long, value_parser = size::parse_size)]
    pub size: u64,
    /// Fixed (all blocks allocated now) or dynamic (allocated on first write).
    #[arg(long = "type", value_enum, default_value_t = TypeArg::Dynamic)]
    pub disk_type: TypeArg,
    /// Payload block size: a power of two from 1M to 256M [default: 32M].
    #[arg(long, value_parser = size::parse_size)]
    pub block_size: Option<u64>,
    /// Logical sector size: 512 or 4096 [default: 512].
    #[arg(long)]
    pub logical_sector_size: Option<u32>,
    /// Physical sector size: 512 or 4096 [default: 4096].
    #[arg(long)]
    pub physical_sector_size: Option<u32>,
}

/// Arguments of `vhdx info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The image.
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
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
}

/// Arguments of `vhdx read`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The image.
    pub file: PathBuf,
    /// Virtual offset of the first byte (bytes, 0x…, or with a suffix).
    #[arg(long, value_parser = size::parse_size)]
    pub offset: u64,
    /// Number of bytes to read (bytes, 0x…, or with a suffix).
    #[arg(long, value_parser = size::parse_size)]
    pub length: u64,
}

/// Arguments of `vhdx write`.
#[derive(Args, Debug)]
pub struct WriteArgs {
    /// The image (opened for writing).
    pub file: PathBuf,
    /// Virtual offset of the first byte (bytes, 0x…, or with a suffix).
    #[arg(long, value_parser = size::parse_size)]
    pub offset: u64,
    /// Where the bytes come from [default: stdin].
    #[arg(long)]
    pub input: Option<PathBuf>,
}

/// Arguments of `vhdx convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The source image: VHDX, or raw (`--input-format raw` or a .raw/.img name).
    pub src: PathBuf,
    /// The image to write (must not exist unless --force).
    pub dst: PathBuf,
    /// Format of SRC [default: raw for .raw/.img names, else vhdx].
    #[arg(long, value_enum)]
    pub input_format: Option<Format>,
    /// Format of DST [default: raw for .raw/.img names, else vhdx].
    #[arg(long, value_enum)]
    pub output_format: Option<Format>,
    /// Type of a VHDX DST [default: dynamic].
    #[arg(long = "type", value_enum)]
    pub disk_type: Option<TypeArg>,
    /// Block size of a VHDX DST: a power of two from 1M to 256M [default: 32M].
    #[arg(long, value_parser = size::parse_size)]
    pub block_size: Option<u64>,
    /// Logical sector size of a VHDX DST [default: the source's; 512 for raw].
    #[arg(long)]
    pub logical_sector_size: Option<u32>,
    /// Physical sector size of a VHDX DST [default: the source's; 4096 for raw].
    #[arg(long)]
    pub physical_sector_size: Option<u32>,
    /// Replace DST if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `vhdx map`.
#[derive(Args, Debug)]
pub struct MapArgs {
    /// The image.
    pub file: PathBuf,
    /// Print a JSON array like `qemu-img map --output=json`.
    #[arg(long)]
    pub json: bool,
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

/// Opens an image read-only; a differencing disk is opened on its own
/// (sectors it does not hold are reported, not read), which is what
/// `info` and `map` need.
pub fn open_alone(path: &Path) -> CliResult<vhdx::Disk> {
    vhdx::OpenOptions::new().without_parent().open(path).in_file(path)
}

fn run(command: Command) -> CliResult {
    match command {
        Command::Create(args) => data::create(&args),
        Command::Info(args) => inspect::info(&args),
        Command::Check(args) => inspect::check(&args),
        Command::Read(args) => data::read(&args),
        Command::Write(args) => data::write(&args),
        Command::Convert(args) => convert::convert(&args),
        Command::Map(args) => inspect::map(&args),
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
