//! Every checkpoint record decoder (`checkpoint::decode` of manifest, shard
//! state and delta, sequencer state, index blocks, detail chunks), the
//! store's format record check, and `DiskStore::open` of a `store` file.
//! Each is fed the input as is and with its checksum made right, so that
//! the decoders behind the checksums are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use tally_engine::fuzzing;
use tally_storage::{Disk, DiskStore, SimDisk, Store};

fn disk_store(bytes: &[u8]) {
    let disk = SimDisk::new();
    if disk.create("store").is_err() || disk.append("store", bytes).is_err() {
        return;
    }
    let disk: Arc<dyn Disk> = Arc::new(disk);
    if let Ok(store) = DiskStore::open(disk) {
        // Read back what was loaded.
        for space in 0..4u8 {
            let _ = store.get(tally_storage::Keyspace(space), b"manifest");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::decode_checkpoint_records(data);
    let _ = fuzzing::decode_checkpoint_body(data);
    let _ = fuzzing::check_format_record(data);
    disk_store(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(blake3::hash(data).as_bytes());
    disk_store(&sealed);
});
