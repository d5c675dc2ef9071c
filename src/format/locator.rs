//! The parent locator of a differencing disk: typed key/value pairs naming
//! where the parent may be (`relative_path`, `volume_path`,
//! `absolute_win32_path`) and which parent it must be (`parent_linkage`, the
//! parent's DataWriteGuid; `parent_linkage2`, an alternative).
//!
//! Keys and values are UTF-16LE without terminator; keys are case-sensitive
//! and unique. Every offset and length is checked against the item's size.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::guid::{self, Guid, PARENT_LOCATOR_TYPE_VHDX};
use crate::error::{Error, Result};

/// The locator header.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawLocatorHeader {
    /// The locator type; VHDX parents use `B04AEFB7-D19E-4A81-B789-25B8E9445913`.
    pub locator_type: [u8; 16],
    /// Zero.
    pub reserved: U16,
    /// Number of key/value entries.
    pub key_value_count: U16,
}
const _: () = assert!(core::mem::size_of::<RawLocatorHeader>() == 20);

/// A key/value entry: where the key and the value are in the item.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub(crate) struct RawLocatorEntry {
    /// Offset of the key from the start of the item.
    pub key_offset: U32,
    /// Offset of the value from the start of the item.
    pub value_offset: U32,
    /// Key length in bytes.
    pub key_length: U16,
    /// Value length in bytes.
    pub value_length: U16,
}
const _: () = assert!(core::mem::size_of::<RawLocatorEntry>() == 12);

/// Key of the parent's DataWriteGuid, in braces.
pub const PARENT_LINKAGE: &str = "parent_linkage";
/// Key of an alternative accepted parent DataWriteGuid.
pub const PARENT_LINKAGE2: &str = "parent_linkage2";
/// Key of the parent's path relative to the child's directory.
pub const RELATIVE_PATH: &str = "relative_path";
/// Key of the parent's path on a volume named by GUID.
pub const VOLUME_PATH: &str = "volume_path";
/// Key of the parent's absolute Windows path.
pub const ABSOLUTE_WIN32_PATH: &str = "absolute_win32_path";

/// A validated parent locator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    /// Key/value pairs, in item order.
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// Parses an item read from `file_offset`.
    pub fn parse(bytes: &[u8], file_offset: u64) -> Result<ParentLocator> {
        const S: &str = "parent locator";
        let (head, _) = RawLocatorHeader::read_from_prefix(bytes)
            .map_err(|_| Error::corrupt(S, file_offset, "item is shorter than the locator header"))?;
        let ty = guid::from_disk(&head.locator_type);
        if ty != PARENT_LOCATOR_TYPE_VHDX {
            return Err(Error::unsupported(S, file_offset, format!("locator type {ty} is not the VHDX type")));
        }
        let count = head.key_value_count.get() as usize;
        let table = bytes
            .get(20..20 + count * 12)
            .and_then(|t| <[RawLocatorEntry]>::ref_from_bytes_with_elems(t, count).ok())
            .ok_or_else(|| {
                Error::corrupt(S, file_offset, format!("{count} entries do not fit the {}-byte item", bytes.len()))
            })?;
        let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
        for (i, raw) in table.iter().enumerate() {
            let at = 20 + i * 12;
            let text = |off: u32, len: u16, what: &str| -> Result<String> {
                let (off, len) = (off as usize, len as usize);
                if len == 0 || len % 2 != 0 || off < 20 || off + len > bytes.len() {
                    return Err(Error::corrupt(
                        S,
                        file_offset + at as u64,
                        format!("entry {i} {what} at {off:#x}+{len} lies outside the item or is empty"),
                    ));
                }
                let units: Vec<u16> =
                    bytes[off..off + len].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                String::from_utf16(&units).map_err(|_| {
                    Error::corrupt(S, file_offset + off as u64, format!("entry {i} {what} is not valid UTF-16"))
                })
            };
            let key = text(raw.key_offset.get(), raw.key_length.get(), "key")?;
            let value = text(raw.value_offset.get(), raw.value_length.get(), "value")?;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(Error::corrupt(S, file_offset + at as u64, format!("key {key} appears twice")));
            }
            entries.push((key, value));
        }
        let loc = ParentLocator { entries };
        if loc.get(PARENT_LINKAGE).is_none() {
            return Err(Error::corrupt(S, file_offset, "no parent_linkage key"));
        }
        if loc.parent_linkage().is_none() {
            return Err(Error::corrupt(S, file_offset, "parent_linkage is not a GUID"));
        }
        Ok(loc)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets `key` to `value`, replacing an existing value.
    pub fn set(&mut self, key: &str, value: String) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((String::from(key), value)),
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) {
        self.entries.retain(|(k, _)| k != key);
    }

    /// The parent's DataWriteGuid this child was made against.
    pub fn parent_linkage(&self) -> Option<Guid> {
        self.get(PARENT_LINKAGE).and_then(parse_braced_guid)
    }

    /// The alternative accepted DataWriteGuid, when present and not nil.
    pub fn parent_linkage2(&self) -> Option<Guid> {
        self.get(PARENT_LINKAGE2).and_then(parse_braced_guid).filter(|g| !g.is_nil())
    }

    /// The on-disk item.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>> {
        let count = self.entries.len();
        let count16 = u16::try_from(count).map_err(|_| Error::invalid("too many parent locator entries"))?;
        let mut out = alloc::vec![0u8; 20 + 12 * count];
        let head = RawLocatorHeader {
            locator_type: guid::to_disk(&PARENT_LOCATOR_TYPE_VHDX),
            reserved: U16::new(0),
            key_value_count: U16::new(count16),
        };
        out[..20].copy_from_slice(head.as_bytes());
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let key: Vec<u8> = k.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let value: Vec<u8> = v.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let length = |bytes: &[u8]| u16::try_from(bytes.len()).ok().filter(|&n| n > 0);
            let (Some(key_length), Some(value_length)) = (length(&key), length(&value)) else {
                return Err(Error::invalid(format!("parent locator entry {k} is empty or too long")));
            };
            let key_offset = out.len();
            out.extend_from_slice(&key);
            let value_offset = out.len();
            out.extend_from_slice(&value);
            let entry = RawLocatorEntry {
                key_offset: U32::new(key_offset as u32),
                value_offset: U32::new(value_offset as u32),
                key_length: U16::new(key_length),
                value_length: U16::new(value_length),
            };
            out[20 + i * 12..32 + i * 12].copy_from_slice(entry.as_bytes());
        }
        if out.len() > super::metadata::MAX_ITEM_LENGTH as usize {
            return Err(Error::invalid("parent locator is larger than 1 MiB"));
        }
        Ok(out)
    }
}

/// Parses `{GUID}` (braces optional, any case).
pub fn parse_braced_guid(text: &str) -> Option<Guid> {
    let t = text.trim();
    let t = t.strip_prefix('{').unwrap_or(t);
    let t = t.strip_suffix('}').unwrap_or(t);
    Guid::try_parse(t).ok()
}

/// Formats a GUID as the locator stores it: `{xxxxxxxx-...}`, lower case.
pub fn braced_guid(guid: &Guid) -> String {
    format!("{{{}}}", guid.hyphenated())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let g = Guid::from_u128(0x7584F8FB_36D3_4091_AFB5_B1AFE587BFA8);
        let mut loc = ParentLocator { entries: Vec::new() };
        loc.set(PARENT_LINKAGE, braced_guid(&g));
        loc.set(RELATIVE_PATH, String::from(".\\parent.vhdx"));
        let bytes = loc.to_bytes().unwrap();
        let back = ParentLocator::parse(&bytes, 0).unwrap();
        assert_eq!(back, loc);
        assert_eq!(back.parent_linkage(), Some(g));
        assert_eq!(parse_braced_guid("{7584F8FB-36D3-4091-AFB5-B1AFE587BFA8}"), Some(g));
    }

    #[test]
    fn refuses_out_of_bounds_entries() {
        let mut loc = ParentLocator { entries: Vec::new() };
        loc.set(PARENT_LINKAGE, braced_guid(&Guid::from_u128(5)));
        let mut bytes = loc.to_bytes().unwrap();
        bytes[24..28].copy_from_slice(&0xFFFF_0000u32.to_le_bytes()); // value offset far away
        assert!(ParentLocator::parse(&bytes, 0).is_err());
        assert!(ParentLocator::parse(&bytes[..10], 0).is_err());
    }
}
