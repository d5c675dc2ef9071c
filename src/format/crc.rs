//! CRC-32C (Castagnoli), the checksum of headers, region tables and log entries.
//!
//! Polynomial 0x1EDC6F41 (reflected 0x82F63B78), initial value and final XOR
//! 0xFFFF_FFFF. With `std` the `crc32c` crate (hardware accelerated where the
//! CPU allows) does the work; without it, a table-driven software version.
//! Both give `crc32c(b"123456789") == 0xE306_9283`.

/// Offset of the checksum field in every checksummed structure.
pub const CHECKSUM_OFFSET: usize = 4;

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// Continues a CRC-32C: `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    {
        ::crc32c::crc32c_append(crc, data)
    }
    #[cfg(not(feature = "std"))]
    {
        software::crc32c_append(crc, data)
    }
}

/// The CRC-32C of a structure whose checksum field (4 bytes at offset 4) is
/// taken as zero, as the format computes it.
pub fn structure_checksum(data: &[u8]) -> u32 {
    let (head, rest) = data.split_at(CHECKSUM_OFFSET.min(data.len()));
    // The checksum field (cut short if the data ends inside it) counts as zeros.
    let field = rest.len().min(4);
    let crc = crc32c_append(crc32c_append(0, head), &[0u8; 4][..field]);
    crc32c_append(crc, &rest[field..])
}

/// Writes the structure checksum into bytes 4..8 of `data`.
pub(crate) fn seal(data: &mut [u8]) {
    let crc = structure_checksum(data);
    data[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Whether the checksum stored in bytes 4..8 of `data` is right.
pub fn verify(data: &[u8]) -> bool {
    if data.len() < 8 {
        return false;
    }
    let stored = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    stored == structure_checksum(data)
}

/// Table-driven CRC-32C for builds without `std` (and the tests' second
/// opinion on the `crc32c` crate).
#[cfg(any(test, not(feature = "std")))]
pub(crate) mod software {
    const POLY: u32 = 0x82F6_3B78;

    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };

    /// Continues a CRC-32C from a finished value `crc` over `data`.
    pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
        let mut state = !crc;
        for &byte in data {
            state = TABLE[((state ^ byte as u32) & 0xFF) as usize] ^ (state >> 8);
        }
        !state
    }

    /// The CRC-32C of `data`.
    #[cfg(test)]
    pub fn crc32c(data: &[u8]) -> u32 {
        crc32c_append(0, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(software::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn software_matches_default_on_many_lengths() {
        let data: alloc::vec::Vec<u8> = (0..5000u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in [0, 1, 3, 4, 7, 8, 63, 64, 4095, 4096, 5000] {
            assert_eq!(crc32c(&data[..len]), software::crc32c(&data[..len]), "len {len}");
            let (a, b) = data[..len].split_at(len / 2);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data[..len]));
        }
    }

    #[test]
    fn seal_then_verify() {
        let mut buf = [0x5Au8; 4096];
        seal(&mut buf);
        assert!(verify(&buf));
        buf[100] ^= 1;
        assert!(!verify(&buf));
    }
}
