//! The posting-rules TOML loader of the business crate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_business::RuleSet;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RuleSet::parse(text);
    }
});
