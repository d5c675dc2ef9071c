//! CRC-32C known-answer values (RFC 3720 appendix B.4, and the classic
//! "123456789" check value) and the structure checksum's zeroed field.

use alloc::vec::Vec;

use crate::format::crc::{crc32c, crc32c_append, seal, software, structure_checksum, verify};

/// RFC 3720 B.4: 32 bytes of 0x00, of 0xFF, ascending 0..31, descending 31..0.
fn rfc3720() -> [(Vec<u8>, u32); 5] {
    [
        (alloc::vec![0u8; 32], 0x8A91_36AA),
        (alloc::vec![0xFFu8; 32], 0x62A8_AB43),
        ((0..32u8).collect(), 0x46DD_794E),
        ((0..32u8).rev().collect(), 0x113F_DB5C),
        (b"123456789".to_vec(), 0xE306_9283),
    ]
}

#[test]
fn known_answers_hardware_and_software() {
    for (data, want) in rfc3720() {
        assert_eq!(crc32c(&data), want, "{data:02x?}");
        assert_eq!(software::crc32c(&data), want, "software {data:02x?}");
        assert_eq!(software::crc32c_append(0, &data), want);
        // Continuing from the CRC of a prefix gives the CRC of the whole.
        let (a, b) = data.split_at(5);
        assert_eq!(software::crc32c_append(software::crc32c(a), b), want);
        assert_eq!(crc32c_append(crc32c(a), b), want);
    }
    assert_eq!(crc32c(&[]), 0);
    assert_eq!(software::crc32c(&[]), 0);
}

#[test]
fn structure_checksum_zeroes_bytes_4_to_8_only() {
    // The checksum of a structure is the CRC-32C of its bytes with the
    // checksum field (4..8) zero: whatever the field holds, and for every
    // length, including the short ones where the field is cut off.
    for len in 0..=12usize {
        let data: Vec<u8> = (0..len as u8).map(|i| 0xA0 ^ i).collect();
        let mut zeroed = data.clone();
        zeroed[4.min(len)..8.min(len)].fill(0);
        assert_eq!(structure_checksum(&data), crc32c(&zeroed), "len {len}");
    }
    // 32 zero bytes with garbage in the field: the RFC 3720 value.
    let mut b = [0u8; 32];
    b[4..8].copy_from_slice(&[1, 2, 3, 4]);
    assert_eq!(structure_checksum(&b), 0x8A91_36AA);
}

#[test]
fn seal_writes_little_endian_at_4_and_verify_checks_it() {
    let mut b = [0u8; 32];
    seal(&mut b);
    assert_eq!(&b[4..8], &0x8A91_36AAu32.to_le_bytes());
    assert!(verify(&b));
    // The smallest checksummed buffer: 8 bytes.
    let mut eight = [0x33u8; 8];
    seal(&mut eight);
    assert!(verify(&eight));
    assert!(!verify(&eight[..7]));
    for i in 0..32 {
        let mut bad = b;
        bad[i] ^= 0x80;
        assert!(!verify(&bad), "flipped byte {i}");
    }
}
