//! The posting-rules TOML loader. When the business layer moves to its own
//! crate, only the `use` line below changes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_engine::business::RuleSet;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RuleSet::parse(text);
    }
});
