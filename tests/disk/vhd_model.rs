//! VHD disks against a raw model: random writes of any offset and length
//! (sub-sector, across sectors, blocks and the end), flushes, and reopens
//! from the bytes a session left, for fixed, dynamic (512 KiB blocks, a
//! size that ends inside a block) and differencing disks over a patterned
//! parent. (What a crash leaves is `tests/crash/vhd.rs`'s.) `VHDX_PROPTEST_CASES`
//! scales the cases as for the VHDX model.

use proptest::prelude::*;
use vhdx::vhd::{VhdCreateOptions, VhdDisk};
use vhdx::{MemStorage, Storage};

use crate::common::data::pattern;

/// A size that ends inside a 512 KiB block.
const SIZE: u64 = (3 << 20) + (100 << 10) + 512 * 7;

#[derive(Debug, Clone)]
enum Step {
    Write { offset: u64, len: usize, seed: u64 },
    Flush,
    Reopen,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let write = (0..SIZE, 1usize..200_000, any::<u64>()).prop_map(|(offset, len, seed)| {
        let len = len.min((SIZE - offset) as usize).max(1);
        Step::Write { offset: offset.min(SIZE - len as u64), len, seed }
    });
    let near_edge = (0u64..4096, 1usize..1500, any::<u64>(), prop::bool::ANY).prop_map(|(d, len, seed, end)| {
        // Around block boundaries and the disk's end.
        let at = if end { SIZE.saturating_sub(d + len as u64) } else { (512 << 10) * (1 + d % 6) - d.min(700) };
        let at = at.min(SIZE - len as u64);
        Step::Write { offset: at, len, seed }
    });
    prop::collection::vec(
        prop_oneof![5 => write, 3 => near_edge, 1 => Just(Step::Flush), 1 => Just(Step::Reopen)],
        1..24,
    )
}

fn bytes(s: Box<dyn Storage>) -> Vec<u8> {
    let mut v = vec![0u8; s.len().unwrap() as usize];
    s.read_exact_at(&mut v, 0).unwrap();
    v
}

fn parent_bytes() -> Vec<u8> {
    let mut p = VhdDisk::create_on(Box::new(MemStorage::new()), &VhdCreateOptions::fixed(SIZE)).unwrap();
    p.write_at(&pattern(4242, SIZE as usize), 0).unwrap();
    bytes(p.into_storage().unwrap())
}

fn open(image: Vec<u8>, parent: Option<&[u8]>) -> VhdDisk {
    let d = VhdDisk::open_storage(Box::new(MemStorage::from_vec(image)), true).unwrap();
    match parent {
        Some(p) => {
            d.with_parent(VhdDisk::open_storage(Box::new(MemStorage::from_vec(p.to_vec())), false).unwrap()).unwrap()
        }
        None => d,
    }
}

fn run(kind: &str, steps: &[Step]) -> Result<(), TestCaseError> {
    let parent = (kind == "differencing").then(parent_bytes);
    let mut disk = match kind {
        "fixed" => VhdDisk::create_on(Box::new(MemStorage::new()), &VhdCreateOptions::fixed(SIZE)).unwrap(),
        "dynamic" => {
            VhdDisk::create_on(Box::new(MemStorage::new()), &VhdCreateOptions::dynamic(SIZE).block_size(512 << 10))
                .unwrap()
        }
        _ => VhdDisk::create_differencing_on(
            Box::new(MemStorage::new()),
            VhdDisk::open_storage(Box::new(MemStorage::from_vec(parent.clone().unwrap())), false).unwrap(),
        )
        .unwrap(),
    };
    let mut model = match &parent {
        Some(p) => p[..SIZE as usize].to_vec(),
        None => vec![0u8; SIZE as usize],
    };
    for step in steps {
        match step {
            Step::Write { offset, len, seed } => {
                let data = pattern(*seed, *len);
                disk.write_at(&data, *offset).unwrap();
                model[*offset as usize..*offset as usize + len].copy_from_slice(&data);
            }
            Step::Flush => disk.flush().unwrap(),
            Step::Reopen => {
                let image = bytes(disk.into_storage().unwrap());
                disk = open(image, parent.as_deref());
            }
        }
        // Spot checks after each step, the whole disk at the end.
        let mut got = vec![0u8; 4096];
        if let Step::Write { offset, .. } = step {
            let at = offset.saturating_sub(100).min(SIZE - 4096);
            disk.read_at(&mut got, at).unwrap();
            prop_assert!(got[..] == model[at as usize..at as usize + 4096], "{kind}: after {step:?}");
        }
    }
    let mut got = vec![0u8; SIZE as usize];
    disk.read_at(&mut got, 0).unwrap();
    prop_assert!(got == model, "{kind}: the whole disk");
    let image = bytes(disk.into_storage().unwrap());
    let again = open(image, parent.as_deref());
    again.read_at(&mut got, 0).unwrap();
    prop_assert!(got == model, "{kind}: the whole disk reopened");
    Ok(())
}

fn cases() -> u32 {
    std::env::var("VHDX_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn vhd_fixed_matches_a_raw_model(s in steps()) {
        run("fixed", &s)?;
    }

    #[test]
    fn vhd_dynamic_matches_a_raw_model(s in steps()) {
        run("dynamic", &s)?;
    }

    #[test]
    fn vhd_differencing_matches_a_raw_model(s in steps()) {
        run("differencing", &s)?;
    }
}
