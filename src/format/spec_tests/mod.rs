//! Unit tests of the format layer against oracles that are not this crate:
//! bytes laid out by hand from the MS-VHDX field tables (offsets, sizes,
//! GUID byte order), CRC-32C known-answer values, and the bytes of real
//! Windows- and QEMU-made images (`shared/fixtures`, facts from its
//! SOURCES.md). The round-trip tests next to each parser only show that our
//! writer and our parser agree; these show that both agree with the format.

mod bat;
pub(crate) mod build;
mod crc;
pub(crate) mod fixtures;
mod header_region;
mod locator;
mod log_entry;
mod metadata;
mod offsets;
mod real_images;
