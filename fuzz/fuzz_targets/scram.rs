//! A SCRAM exchange fed two client messages split from the input, with and
//! without TLS channel binding on offer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtenant::auth::scram::{self, Binding, ScramKeys};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (first, last) = rest.split_at(split);
    let offered = match mode % 3 {
        0 => Binding::Unavailable,
        n => Binding::Tls {
            plus: n == 2,
            end_point: &[7; 32],
        },
    };
    let keys = ScramKeys::mock(&[1; 32], "user");
    if let Ok((exchange, _)) = scram::server_first(keys, first, offered) {
        assert!(exchange.finish(last.get(1..).unwrap_or_default()).is_err());
    }
});
