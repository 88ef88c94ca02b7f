//! The encoding of every record a checkpoint writes: CRC32 ‖ postcard.
//! The CRC catches damage in a record read without a manifest sum; the
//! manifest's BLAKE3 and the blob seals catch the rest.

use serde::de::DeserializeOwned;
use serde::Serialize;

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
