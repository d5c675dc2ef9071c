//! The NBD server over a block device that is not a `Disk`: a RAM device of
//! 4096-byte sectors that implements only the trait's required methods, so
//! every unaligned request QEMU sends goes through the trait's default
//! byte-addressed read and read-merge-write. The oracle is the same
//! `qemu-io` commands run on a raw file, and the device's own bytes after
//! the server hands it back.

use vhdx::nbd::{ServeOptions, Server};
use vhdx::{BlockDevice, Result};

use crate::common::{compare::*, qemu::*};
use crate::support::{qemu_io_any, qemu_io_ok};

const SIZE: usize = 8 << 20;

/// Sectors in memory; `writable` false makes a read-only device.
struct Ram {
    bytes: Vec<u8>,
    writable: bool,
}

impl BlockDevice for Ram {
    fn sector_size(&self) -> u32 {
        4096
    }
    fn sector_count(&self) -> u64 {
        self.bytes.len() as u64 / 4096
    }
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        assert_eq!(buf.len() % 4096, 0, "the default methods ask for whole sectors");
        let at = lba as usize * 4096;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<()> {
        assert_eq!(buf.len() % 4096, 0, "the default methods write whole sectors");
        assert!(self.writable, "a write reached a read-only device");
        let at = lba as usize * 4096;
        self.bytes[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn is_writable(&self) -> bool {
        self.writable
    }
}

fn serve(ram: Ram) -> (String, vhdx::nbd::Stopper, std::thread::JoinHandle<std::io::Result<Ram>>) {
    let server = Server::bind("127.0.0.1:0", ram, ServeOptions::default()).expect("binding 127.0.0.1:0");
    let uri = format!("nbd://{}/", server.local_addr().unwrap());
    let stopper = server.stopper();
    (uri, stopper, std::thread::spawn(move || server.run()))
}

#[test]
fn a_device_of_4k_sectors_takes_unaligned_qemu_writes() {
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref.raw");
    let seed: Vec<u8> = (0..SIZE).map(|i| (i / 4096) as u8 ^ (i as u8)).collect();
    std::fs::write(&reference, &seed).unwrap();
    let (uri, stopper, handle) = serve(Ram { bytes: seed, writable: true });
    let info = qemu_img(&["info", "-f", "raw", "--output=json", &uri]);
    assert!(info.contains(&format!("\"virtual-size\": {SIZE}")), "{info}");
    // Inside one sector, across sector boundaries, sector-aligned, at the
    // very end; zeroes and a trim (advisory: this device keeps the bytes).
    let cmds = [
        "write -P 0x11 100 200",
        "write -P 0x22 4000 200",
        "write -P 0x33 8192 12288",
        "write -P 0x44 1000000 70000",
        "write -P 0x55 8388000 608",
        "write -z 3000000 5000",
        "flush",
    ];
    qemu_io_ok(&[], &uri, &cmds);
    qemu_io_ok(&[], &reference.display().to_string(), &cmds);
    let out = dir.path().join("out.raw");
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &uri, out.to_str().unwrap()]);
    assert_files_equal(&out, &reference);
    // A trim the device keeps.
    qemu_io_ok(&[], &uri, &["discard 4096 8192", "read -P 0x33 8192 4096"]);
    stopper.stop();
    let ram = handle.join().unwrap().expect("the server gives the device back");
    assert!(ram.bytes == std::fs::read(&reference).unwrap(), "the device's bytes differ from the reference");
}

#[test]
fn a_read_only_device_is_exported_read_only() {
    if !qemu() {
        return;
    }
    let (uri, stopper, handle) = serve(Ram { bytes: vec![7u8; SIZE], writable: false });
    qemu_io_ok(&["-r"], &uri, &["read -P 7 4095 2"]);
    // QEMU sees the export's read-only flag: it will not open it for writing.
    let (ok, text) = qemu_io_any(&[], &uri, &["write -P 1 0 512"]);
    assert!(!ok && text.contains("Permission denied"), "a read-only device opened for writing:\n{text}");
    stopper.stop();
    assert!(handle.join().unwrap().unwrap().bytes.iter().all(|&b| b == 7));
}
