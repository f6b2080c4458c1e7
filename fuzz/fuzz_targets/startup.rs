//! The first packet of a connection: length word, then body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtenant::protocol::startup;

fuzz_target!(|data: &[u8]| {
    if let Some(word) = data.get(..4) {
        if let Ok(n) = startup::body_len(word.try_into().unwrap(), 10_000) {
            assert!(n + 4 <= 10_000);
        }
    }
    let _ = startup::parse(data);
});
