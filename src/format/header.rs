//! The file type identifier and the two headers.
//!
//! The first 1 MiB of every VHDX file is the header section: the file type
//! identifier at 0 (never rewritten), header 1 at 64 KiB, header 2 at 128 KiB,
//! and the two region table copies at 192 and 256 KiB. A header is valid when
//! its signature, version and CRC-32C (over its 4 KiB) are right; the current
//! header is the valid one with the higher sequence number. Headers are
//! updated in place, never through the log: the new one goes over the slot
//! that is not current, with a higher sequence number.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::crc;
use super::guid::{self, Guid};
use super::{is_mib_multiple, MIB};
use crate::error::{Error, Result};

/// File offset of the file type identifier.
pub const FILE_IDENTIFIER_OFFSET: u64 = 0;
/// File offsets of header 1 and header 2.
pub const HEADER_OFFSETS: [u64; 2] = [64 * 1024, 128 * 1024];
/// Size of a header, and of the span its checksum covers.
pub const HEADER_SIZE: usize = 4096;
/// The file type identifier's signature.
pub const FILE_SIGNATURE: [u8; 8] = *b"vhdxfile";
/// A header's signature.
pub const HEADER_SIGNATURE: [u8; 4] = *b"head";
/// The only header version defined.
pub const HEADER_VERSION: u16 = 1;
/// The only log version defined.
pub const LOG_VERSION: u16 = 0;

/// The file type identifier, at file offset 0.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct RawFileIdentifier {
    /// `"vhdxfile"`.
    pub signature: [u8; 8],
    /// The creator, UTF-16LE, optionally NUL-terminated; diagnostic only.
    pub creator: [u8; 512],
}
const _: () = assert!(core::mem::size_of::<RawFileIdentifier>() == 520);

impl RawFileIdentifier {
    /// A file type identifier naming `creator`.
    pub(crate) fn new(creator: &str) -> Self {
        let mut raw = RawFileIdentifier { signature: FILE_SIGNATURE, creator: [0; 512] };
        for (i, unit) in creator.encode_utf16().take(255).enumerate() {
            raw.creator[2 * i..2 * i + 2].copy_from_slice(&unit.to_le_bytes());
        }
        raw
    }

    /// The creator string (lossy, up to the first NUL).
    pub fn creator(&self) -> String {
        let units: Vec<u16> =
            self.creator.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
        String::from_utf16_lossy(&units)
    }

    /// Checks the signature.
    pub fn validate(bytes: &[u8]) -> Result<Self> {
        let raw = RawFileIdentifier::read_from_prefix(bytes)
            .map_err(|_| Error::corrupt("file type identifier", 0, "file is shorter than the identifier"))?
            .0;
        if raw.signature != FILE_SIGNATURE {
            return Err(Error::corrupt(
                "file type identifier",
                0,
                format!("signature is {:?}, not \"vhdxfile\": not a VHDX file", EscapedBytes(&raw.signature)),
            ));
        }
        Ok(raw)
    }
}

/// Bytes shown as an escaped ASCII string in messages.
pub(crate) struct EscapedBytes<'a>(pub &'a [u8]);

impl core::fmt::Debug for EscapedBytes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            for c in core::ascii::escape_default(b) {
                f.write_str(core::str::from_utf8(&[c]).unwrap_or("?"))?;
            }
        }
        f.write_str("\"")
    }
}

/// A header as it lies on disk.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawHeader {
    /// `"head"`.
    pub signature: [u8; 4],
    /// CRC-32C of the 4 KiB header with this field zero.
    pub checksum: U32,
    /// Higher is newer.
    pub sequence_number: U64,
    /// Changed at the first header update of every writable session.
    pub file_write_guid: [u8; 16],
    /// Changed before the first change a reader can see; children link to it.
    pub data_write_guid: [u8; 16],
    /// Zero when the log is empty; otherwise the GUID every valid log entry carries.
    pub log_guid: [u8; 16],
    /// 0.
    pub log_version: U16,
    /// 1.
    pub version: U16,
    /// Log length in bytes, a multiple of 1 MiB.
    pub log_length: U32,
    /// Log file offset, a multiple of 1 MiB.
    pub log_offset: U64,
    /// Zero.
    pub reserved: [u8; 4016],
}
const _: () = assert!(core::mem::size_of::<RawHeader>() == HEADER_SIZE);

/// A validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Higher is newer.
    pub sequence_number: u64,
    /// Changes every writable session.
    pub file_write_guid: Guid,
    /// Changes before the first reader-visible change.
    pub data_write_guid: Guid,
    /// Non-nil while the log holds entries that may need replaying.
    pub log_guid: Guid,
    /// The log version (0).
    pub log_version: u16,
    /// Log length in bytes.
    pub log_length: u32,
    /// Log file offset.
    pub log_offset: u64,
}

impl HeaderInfo {
    /// Parses and validates the header in `bytes` (at least 4 KiB), read from
    /// `file_offset`.
    pub fn parse(bytes: &[u8], file_offset: u64) -> Result<HeaderInfo> {
        const S: &str = "header";
        if bytes.len() < HEADER_SIZE {
            return Err(Error::corrupt(S, file_offset, "file ends inside the header"));
        }
        let bytes = &bytes[..HEADER_SIZE];
        let raw = RawHeader::read_from_bytes(bytes).map_err(|_| Error::corrupt(S, file_offset, "bad size"))?;
        if raw.signature != HEADER_SIGNATURE {
            return Err(Error::corrupt(
                S,
                file_offset,
                format!("signature is {:?}, not \"head\"", EscapedBytes(&raw.signature)),
            ));
        }
        if !crc::verify(bytes) {
            return Err(Error::corrupt(S, file_offset, "checksum mismatch"));
        }
        if raw.version.get() != HEADER_VERSION {
            return Err(Error::unsupported(
                S,
                file_offset,
                format!("version {} (only 1 is defined)", raw.version.get()),
            ));
        }
        let info = HeaderInfo {
            sequence_number: raw.sequence_number.get(),
            file_write_guid: guid::from_disk(&raw.file_write_guid),
            data_write_guid: guid::from_disk(&raw.data_write_guid),
            log_guid: guid::from_disk(&raw.log_guid),
            log_version: raw.log_version.get(),
            log_length: raw.log_length.get(),
            log_offset: raw.log_offset.get(),
        };
        if !is_mib_multiple(info.log_length as u64) || !is_mib_multiple(info.log_offset) {
            return Err(Error::corrupt(
                S,
                file_offset,
                format!("log at {:#x} of {:#x} bytes is not 1 MiB aligned", info.log_offset, info.log_length),
            ));
        }
        if info.log_length > 0 && info.log_offset < MIB {
            return Err(Error::corrupt(S, file_offset, "log lies inside the header section"));
        }
        if info.log_offset.checked_add(info.log_length as u64).is_none() {
            return Err(Error::corrupt(S, file_offset, "log extends past the largest file offset"));
        }
        if !info.log_guid.is_nil() && info.log_version != LOG_VERSION {
            return Err(Error::unsupported(S, file_offset, format!("log version {}", info.log_version)));
        }
        Ok(info)
    }

    /// The 4 KiB on-disk form, checksum included.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let raw = RawHeader {
            signature: HEADER_SIGNATURE,
            checksum: U32::new(0),
            sequence_number: U64::new(self.sequence_number),
            file_write_guid: guid::to_disk(&self.file_write_guid),
            data_write_guid: guid::to_disk(&self.data_write_guid),
            log_guid: guid::to_disk(&self.log_guid),
            log_version: U16::new(self.log_version),
            version: U16::new(HEADER_VERSION),
            log_length: U32::new(self.log_length),
            log_offset: U64::new(self.log_offset),
            reserved: [0; 4016],
        };
        let mut bytes = raw.as_bytes().to_vec();
        crc::seal(&mut bytes);
        bytes
    }
}

/// Picks the current header from the two slots' parse results: the only valid
/// one, or the valid one with the larger sequence number (header 1 on a tie, as
/// Disk2VHD writes identical headers). Returns the slot index and the header.
pub fn select_current(slots: [Result<HeaderInfo>; 2]) -> Result<(usize, HeaderInfo)> {
    match slots {
        [Ok(a), Ok(b)] => {
            if b.sequence_number > a.sequence_number {
                Ok((1, b))
            } else {
                Ok((0, a))
            }
        }
        [Ok(a), Err(_)] => Ok((0, a)),
        [Err(_), Ok(b)] => Ok((1, b)),
        [Err(e1), Err(e2)] => Err(Error::corrupt(
            "header",
            HEADER_OFFSETS[0],
            format!("neither header is valid (header 1: {e1}; header 2: {e2})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> HeaderInfo {
        HeaderInfo {
            sequence_number: seq,
            file_write_guid: Guid::from_u128(1),
            data_write_guid: Guid::from_u128(2),
            log_guid: Guid::nil(),
            log_version: 0,
            log_length: MIB as u32,
            log_offset: MIB,
        }
    }

    #[test]
    fn round_trip_and_checksum() {
        let h = sample(7);
        let bytes = h.to_bytes();
        assert_eq!(&bytes[0..4], b"head");
        assert_eq!(HeaderInfo::parse(&bytes, 0).unwrap(), h);
        let mut bad = bytes.clone();
        bad[4095] ^= 0xFF; // the CRC covers all 4 KiB, not just the first 80 bytes
        assert!(matches!(HeaderInfo::parse(&bad, 0), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn current_is_higher_sequence_or_first_on_tie() {
        let (slot, h) = select_current([Ok(sample(3)), Ok(sample(4))]).unwrap();
        assert_eq!((slot, h.sequence_number), (1, 4));
        let (slot, _) = select_current([Ok(sample(5)), Ok(sample(5))]).unwrap();
        assert_eq!(slot, 0);
        let bad = HeaderInfo::parse(&[0u8; 4096], 0);
        let (slot, _) = select_current([bad, Ok(sample(1))]).unwrap();
        assert_eq!(slot, 1);
    }

    #[test]
    fn creator_round_trip() {
        let id = RawFileIdentifier::new("vhdx-rs 0.1");
        assert_eq!(id.creator(), "vhdx-rs 0.1");
        assert!(RawFileIdentifier::validate(id.as_bytes()).is_ok());
    }
}
