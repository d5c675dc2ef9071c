//! GUIDs as the format stores them, and the format's well-known GUIDs.
//!
//! On disk a GUID is in Microsoft's mixed-endian layout: a little-endian u32,
//! two little-endian u16s, then eight raw bytes. `uuid::Uuid::from_bytes_le`
//! reads that layout, so `2DC27766-F623-4200-9D64-115E9BFD4A08` is stored as
//! `66 77 C2 2D 23 F6 00 42 9D 64 11 5E 9B FD 4A 08`. Constants here are written
//! in their text form.

pub(crate) use crate::Guid;

/// Reads a GUID from its 16 on-disk bytes.
pub fn from_disk(bytes: &[u8; 16]) -> Guid {
    Guid::from_bytes_le(*bytes)
}

/// The 16 on-disk bytes of a GUID.
pub(crate) fn to_disk(guid: &Guid) -> [u8; 16] {
    guid.to_bytes_le()
}

/// Region table entry of the block allocation table.
pub const BAT_REGION: Guid = Guid::from_u128(0x2DC27766_F623_4200_9D64_115E9BFD4A08);
/// Region table entry of the metadata region.
pub const METADATA_REGION: Guid = Guid::from_u128(0x8B7CA206_4790_4B9A_B8FE_575F050F886E);

/// Metadata item: file parameters (block size, flags).
pub const FILE_PARAMETERS: Guid = Guid::from_u128(0xCAA16737_FA36_4D43_B3B6_33F0AA44E76B);
/// Metadata item: virtual disk size.
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_u128(0x2FA54224_CD1B_4876_B211_5DBED83BF4B8);
/// Metadata item: virtual disk ID (SCSI page 83).
pub const VIRTUAL_DISK_ID: Guid = Guid::from_u128(0xBECA12AB_B2E6_4523_93EF_C309E000C746);
/// Metadata item: logical sector size.
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::from_u128(0x8141BF1D_A96F_4709_BA47_F233A8FAAB5F);
/// Metadata item: physical sector size.
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::from_u128(0xCDA348C7_445D_4471_9CC9_E9885251C556);
/// Metadata item: parent locator (differencing disks).
pub const PARENT_LOCATOR: Guid = Guid::from_u128(0xA8D35F2D_B30B_454D_ABF7_D3D84834AB0C);
/// Parent locator type of VHDX parents.
pub const PARENT_LOCATOR_TYPE_VHDX: Guid = Guid::from_u128(0xB04AEFB7_D19E_4A81_B789_25B8E9445913);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_disk_layout_is_mixed_endian() {
        assert_eq!(
            to_disk(&BAT_REGION),
            [0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08]
        );
        assert_eq!(from_disk(&to_disk(&METADATA_REGION)), METADATA_REGION);
    }
}
