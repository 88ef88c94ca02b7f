//! Entry points for the cargo-fuzz targets in `engine/fuzz/`: thin wrappers
//! over the crate-private decoders of what tally reads back from disk.
//! Only built with the `fuzzing` feature (off by default); not an API, may
//! change at any time.
//!
//! Each wrapper returns `Ok` with a count or `Err` with the decoder's
//! typed error as text; a panic anywhere below is a bug.

use crate::checkpoint::{self, Manifest, SequencerState, ShardDelta, ShardState};
use crate::config::Config;
use crate::detail::Detail;
use crate::routing::shard_of;
use crate::runs::RunHeader;
use crate::sequencer::KEYSPACE_META;
use tally_storage::{MemoryStore, Store, WriteBatch};

/// Shard count the decoders route accounts with.
const SHARDS: u16 = 4;

/// `command::decode_batch` over `bytes` as a log record payload (CRC-32
/// included): the number of commands, or why not.
pub fn decode_batch(bytes: &[u8]) -> Result<usize, String> {
    crate::command::decode_batch(bytes, |a| shard_of(a, SHARDS).0)
        .map(|commands| {
            // Touch what the shards would compute from a decoded command.
            commands.iter().fold(0u64, |m, c| m | c.shard_mask());
            commands.len()
        })
        .map_err(|e| e.to_string())
}

/// [`decode_batch`] of `body` with its correct CRC-32 appended, so that the
/// fuzzer reaches the decoder behind the checksum.
pub fn decode_batch_body(body: &[u8]) -> Result<usize, String> {
    let mut bytes = body.to_vec();
    bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    decode_batch(&bytes)
}

/// Encodes an empty batch (a seed for the corpus).
pub fn encode_empty_batch() -> Vec<u8> {
    crate::command::encode_batch(&[])
}

/// `checkpoint::decode` of `bytes` (`crc32 ‖ postcard`) as every record a
/// checkpoint holds: manifest, shard state, shard delta, sequencer state,
/// index run header, detail chunk; and the bytes as a run's page (raw
/// postcard, checked by its fence when read). Returns how many decoded.
pub fn decode_checkpoint_records(bytes: &[u8]) -> Result<usize, String> {
    let mut ok = 0usize;
    let mut errors = Vec::new();
    let mut note = |r: Result<(), String>| match r {
        Ok(()) => ok += 1,
        Err(e) => errors.push(e),
    };
    note(checkpoint::decode::<Manifest>(bytes).map(|m| {
        m.runs
            .iter()
            .for_each(|r| drop((r.data_name(), r.header_name())));
    }));
    note(checkpoint::decode::<ShardState>(bytes).map(drop));
    note(checkpoint::decode::<ShardDelta>(bytes).map(drop));
    note(checkpoint::decode::<SequencerState>(bytes).map(drop));
    note(checkpoint::decode::<RunHeader>(bytes).map(drop));
    note(checkpoint::decode::<Vec<Detail>>(bytes).map(drop));
    note(crate::runs::decode_page(bytes).map(drop));
    if ok == 0 {
        Err(errors.join("; "))
    } else {
        Ok(ok)
    }
}

/// [`decode_checkpoint_records`] of `body` with its correct CRC-32 in
/// front, so that the fuzzer reaches postcard and the types behind it.
pub fn decode_checkpoint_body(body: &[u8]) -> Result<usize, String> {
    let mut bytes = crc32fast::hash(body).to_le_bytes().to_vec();
    bytes.extend_from_slice(body);
    decode_checkpoint_records(&bytes)
}

/// The store's format record check (`check_meta`) on `bytes` as the
/// stored record, read only.
pub fn check_format_record(bytes: &[u8]) -> Result<(), String> {
    let store = MemoryStore::new();
    let mut batch = WriteBatch::new();
    batch.put(
        KEYSPACE_META,
        crate::engine::META_KEY.to_vec(),
        bytes.to_vec(),
    );
    store.write(batch).map_err(|e| e.to_string())?;
    let mut config = Config::memory();
    config.read_only = true;
    config.shards = SHARDS;
    crate::engine::check_meta(&store, None, &mut config, "fuzz", false)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A valid format record body with its CRC (a seed for the corpus).
pub fn format_record_seed() -> Vec<u8> {
    let mut value = crate::engine::META_MAGIC.to_vec();
    value.extend_from_slice(&crate::engine::STORE_FORMAT.to_le_bytes());
    value.extend_from_slice(&SHARDS.to_le_bytes());
    value.extend_from_slice(&Config::memory().utc_offset_s.to_le_bytes());
    value.extend_from_slice(&[7u8; 16]);
    value.extend_from_slice(&[9u8; 32]);
    let crc = crc32fast::hash(&value);
    value.extend_from_slice(&crc.to_le_bytes());
    value
}
