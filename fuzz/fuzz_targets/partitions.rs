//! The agent's MBR and GPT code on a disk whose first sectors are the input (a disk image a
//! tenant chose): the tables are read without a panic, and a partition appended after an image
//! (the cloud-init seed) either fails with a reason or lies on the disk, after the image.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/plinth-agent/src/partition.rs"]
mod partition;

use std::io::Write;

use libfuzzer_sys::fuzz_target;

const DISK: u64 = 8 << 20;
const IMAGE_END: u64 = 1 << 20;
const SEED: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::tempfile_in("/dev/shm")
        .or_else(|_| tempfile::tempfile())
        .expect("a scratch file");
    f.write_all(&data[..data.len().min(DISK as usize)]).unwrap();
    f.set_len(DISK).unwrap();
    let _ = partition::read(&mut f);
    if let Ok(p) = partition::add_partition(&mut f, DISK, IMAGE_END, SEED, "cidata") {
        assert!(p.start >= IMAGE_END, "{p:?} overlaps the image");
        assert!(
            p.start.checked_add(p.len).is_some_and(|end| end <= DISK),
            "{p:?} past the disk"
        );
        assert_eq!(p.len, SEED);
    }
});
