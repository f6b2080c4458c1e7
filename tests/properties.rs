//! Property tests of the parsers a client reaches before and after login: the
//! startup packet, message framing and the SCRAM exchange take arbitrary bytes
//! without panicking and within their limits; the session scan never misses a
//! statement that could touch the tenant context.

use pgtenant::auth::scram::{self, Binding, ScramKeys};
use pgtenant::protocol::frame::{Frames, HEADER_LEN};
use pgtenant::protocol::startup::{self, Initial};
use pgtenant::tenant::scan::may_change_session;
use proptest::prelude::*;

fn keys() -> ScramKeys {
    ScramKeys::mock(&[3; 32], "user")
}

proptest! {
    #[test]
    fn startup_packets_of_any_bytes_are_parsed_or_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        max in 8usize..20_000,
    ) {
        if bytes.len() >= 4 {
            let word: [u8; 4] = bytes[..4].try_into().unwrap();
            if let Ok(n) = startup::body_len(word, max) {
                prop_assert!(n + 4 <= max && n + 4 >= startup::MIN_LEN);
            }
        }
        let _ = startup::parse(&bytes);
    }

    #[test]
    fn well_formed_startup_packets_round_trip(
        params in prop::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..8),
        user in "[a-z][a-z0-9_.]{0,20}",
    ) {
        let mut all = vec![("user".to_owned(), user.clone())];
        all.extend(params.into_iter().filter(|(k, _)| k != "user" && !k.starts_with("_pq_")));
        let mut packet = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            all.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &mut packet,
        )
        .unwrap();
        // The body follows the length word.
        match startup::parse(&packet[4..]) {
            Ok(Initial::Startup(m)) => {
                prop_assert_eq!(m.user(), user.as_str());
                for (k, v) in &all {
                    prop_assert!(m.params.iter().any(|(pk, pv)| pk == k && pv == v));
                }
            }
            // Repeated names are refused, as PostgreSQL does not define them.
            Err(_) if all.iter().enumerate().any(|(i, (k, _))| all[..i].iter().any(|(p, _)| p == k)) => {}
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn framing_never_yields_more_than_the_buffer_or_the_limit(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        max in 5usize..1024,
    ) {
        let mut frames = Frames::new(&bytes, max);
        let mut end = 0;
        for frame in &mut frames {
            let Ok(frame) = frame else { break };
            prop_assert_eq!(frame.start, end, "frames are contiguous");
            prop_assert!(frame.end - frame.start >= HEADER_LEN);
            prop_assert!(frame.end - frame.start <= max + 1, "tag + length ≤ limit");
            prop_assert!(frame.end <= bytes.len());
            end = frame.end;
        }
        prop_assert_eq!(frames.consumed(), end);
    }

    #[test]
    fn messages_split_anywhere_are_found_whole(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..10),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for body in &bodies {
            stream.push(b'Q');
            stream.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            stream.extend_from_slice(body);
            ends.push(stream.len());
        }
        let cut = cut.index(stream.len() + 1);
        let found: Vec<usize> = Frames::new(&stream[..cut], 1 << 20)
            .map(|f| f.unwrap().end)
            .collect();
        let whole: Vec<usize> = ends.into_iter().filter(|&e| e <= cut).collect();
        prop_assert_eq!(found, whole);
    }

    #[test]
    fn scram_takes_any_client_messages_without_panicking_or_passing(
        first in prop::collection::vec(any::<u8>(), 0..512),
        last in prop::collection::vec(any::<u8>(), 0..512),
        tls in any::<bool>(),
        plus in any::<bool>(),
    ) {
        let offered = if tls { Binding::Tls { plus, end_point: &[9; 32] } } else { Binding::Unavailable };
        if let Ok((exchange, server_first)) = scram::server_first(keys(), &first, offered) {
            prop_assert!(server_first.starts_with("r="));
            prop_assert!(exchange.finish(&last).is_err(), "random bytes never prove a password");
        }
    }

    #[test]
    fn scram_first_messages_with_any_nonce(nonce in "[!-~]{0,64}", flag in "[nyp]") {
        let msg = format!("{flag},,n=,r={nonce}");
        let ok = scram::server_first(keys(), msg.as_bytes(), Binding::Unavailable).is_ok();
        // Attributes after the nonce (extensions) are ignored, so only what
        // comes before a comma is the nonce.
        let valid_nonce = !nonce.split(',').next().unwrap_or_default().is_empty();
        prop_assert_eq!(ok, flag != "p" && valid_nonce, "{}", msg);
    }

    #[test]
    fn the_scan_flags_a_context_change_behind_any_statement(
        before in "[a-zA-Z0-9 ,()=*+<>]{0,40}",
        word in prop::sample::select(vec!["set", "reset", "discard", "do", "alter", "create"]),
        upper in prop::collection::vec(any::<bool>(), 8),
        space in "[ \t\r\n]{1,3}",
    ) {
        let word: String = word
            .chars()
            .zip(upper.iter().cycle())
            .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c })
            .collect();
        let sql = format!("SELECT {before};{space}{word} app.current_tenant = 'b'");
        prop_assert!(may_change_session(sql.as_bytes()), "{}", sql);
        let call = format!("SELECT {before}, PG_CATALOG.Set_Config('app.current_tenant', 'b', false)");
        prop_assert!(may_change_session(call.as_bytes()), "{}", call);
    }
}
