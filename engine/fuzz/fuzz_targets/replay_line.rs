//! The replay line decoder of `tally-loadtest replay`
//! (`tally_loadtest::line::decode_line`, the very function the command
//! calls): the input split into lines as replay splits it. A line is an
//! operation or an error message; an error repeats at most a bounded piece
//! of the line (a 10 MB bad amount is not echoed back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_loadtest::line::decode_line;

fuzz_target!(|data: &[u8]| {
    for (n, raw) in data.split(|&b| b == b'\n').enumerate() {
        let raw = if n == 0 {
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
        } else {
            raw
        };
        let Ok(line) = std::str::from_utf8(raw) else {
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Err(reason) = decode_line(line) {
            assert!(
                reason.len() <= 1024,
                "an error of {} bytes for a line of {}",
                reason.len(),
                line.len()
            );
        }
    }
});
