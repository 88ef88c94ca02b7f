//! The engine's log batch decoder (`command::decode_batch`): the input as a
//! whole record payload (checksum included), and as a body with its correct
//! CRC-32 appended so that the decoder behind the checksum is reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_engine::fuzzing;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::decode_batch(data);
    let _ = fuzzing::decode_batch_body(data);
});
