//! The encoding of every record a checkpoint writes: CRC32 ‖ postcard.
//! The CRC catches damage in a record read without a manifest sum; the
//! manifest's BLAKE3 and the blob seals catch the rest.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tally_storage::BlobStore;

/// A blob's name, size and BLAKE3: what the manifest holds for every blob a
/// reopen loads, and what a run's header is read again against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlobSum {
    pub name: String,
    pub len: u64,
    pub hash: [u8; 32],
}

impl BlobSum {
    pub fn of(name: &str, bytes: &[u8]) -> BlobSum {
        BlobSum {
            name: name.to_string(),
            len: bytes.len() as u64,
            hash: *blake3::hash(bytes).as_bytes(),
        }
    }

    /// The blob, read from `blobs` and decoded, if it is the one summed.
    pub fn read<T: DeserializeOwned>(&self, blobs: &dyn BlobStore) -> Result<T, String> {
        let bytes = blobs
            .get(&self.name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "missing".to_string())?;
        if bytes.len() as u64 != self.len || *blake3::hash(&bytes).as_bytes() != self.hash {
            return Err(format!(
                "{} bytes that do not match the manifest's size ({}) and BLAKE3",
                bytes.len(),
                self.len
            ));
        }
        decode(&bytes)
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let body = postcard::to_allocvec(value).map_err(|e| e.to_string())?;
    let mut out = crc32fast::hash(&body).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (crc, body) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| "record shorter than its checksum".to_string())?;
    if u32::from_le_bytes(*crc) != crc32fast::hash(body) {
        return Err("checksum mismatch".into());
    }
    postcard::from_bytes(body).map_err(|e| format!("undecodable: {e}"))
}
