//! Sharing a disk between threads: reads run concurrently under a read lock,
//! writes are serialized, and every thread's view matches a model.

use std::sync::{Arc, RwLock};

use vhdx::{CreateOptions, Disk, OpenOptions};

use crate::common::data::XorShift;

const fn assert_send_sync<T: Send + Sync>() {}
const _: () = assert_send_sync::<Disk>();

#[test]
fn threads_write_interleaved_stripes_and_read_everything() {
    for kind in ["dynamic", "differencing"] {
        let dir = tempfile::tempdir().unwrap();
        let size: u64 = 32 << 20;
        let path = dir.path().join("disk.vhdx");
        let disk = if kind == "dynamic" {
            Disk::create(&path, &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap()
        } else {
            let base = dir.path().join("base.vhdx");
            let mut b = Disk::create(&base, &CreateOptions::dynamic(size).block_size(1 << 20)).unwrap();
            b.write_at(&vec![0x11; 8 << 20], 0).unwrap();
            b.close().unwrap();
            Disk::create_differencing(&path, &base, Some(1 << 20)).unwrap()
        };
        let initial = {
            let mut v = vec![0u8; size as usize];
            disk.read_at(&mut v, 0).unwrap();
            v
        };
        let disk = Arc::new(RwLock::new(disk));
        // Thread t owns every 64 KiB stripe s with s % THREADS == t, so two
        // threads keep racing to allocate the same 1 MiB blocks.
        const THREADS: u64 = 4;
        const STRIPE: u64 = 64 << 10;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let disk = Arc::clone(&disk);
                let mut expected = initial.clone();
                std::thread::spawn(move || {
                    let mut rng = XorShift(0xABCD_0000 + t);
                    for i in 0..300u64 {
                        let stripe = (rng.next() % (size / STRIPE / THREADS)) * THREADS + t;
                        let within = rng.next() % (STRIPE - 1);
                        let len = 1 + rng.next() % (STRIPE - within);
                        let at = stripe * STRIPE + within;
                        let data: Vec<u8> = (0..len).map(|j| (j as u8) ^ (t as u8 * 37) ^ (i as u8)).collect();
                        disk.write().unwrap().write_at(&data, at).unwrap();
                        expected[at as usize..(at + len) as usize].copy_from_slice(&data);
                        // Read back a random own stripe under the shared lock.
                        let s = (rng.next() % (size / STRIPE / THREADS)) * THREADS + t;
                        let mut buf = vec![0u8; STRIPE as usize];
                        disk.read().unwrap().read_at(&mut buf, s * STRIPE).unwrap();
                        assert_eq!(buf, &expected[(s * STRIPE) as usize..((s + 1) * STRIPE) as usize], "thread {t}");
                        if i % 50 == 0 {
                            disk.write().unwrap().flush().unwrap();
                        }
                    }
                    expected
                })
            })
            .collect();
        let models: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut model = initial.clone();
        for s in 0..size / STRIPE {
            let owner = &models[(s % THREADS) as usize];
            let r = (s * STRIPE) as usize..((s + 1) * STRIPE) as usize;
            model[r.clone()].copy_from_slice(&owner[r]);
        }
        let disk = Arc::try_unwrap(disk).unwrap().into_inner().unwrap();
        disk.close().unwrap();
        let reopened = OpenOptions::new().open(&path).unwrap();
        let mut all = vec![0u8; size as usize];
        reopened.read_at(&mut all, 0).unwrap();
        assert!(all == model, "{kind}: the reopened disk differs from the merged model");
        assert!(vhdx::check::check_file(&path).unwrap().is_clean());
    }
}
