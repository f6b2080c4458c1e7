//! Message framing over any bytes, with the limit taken from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtenant::protocol::frame::Frames;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, buf)) = data.split_first() else {
        return;
    };
    let max = 5 + limit as usize * 16;
    let mut frames = Frames::new(buf, max);
    let mut end = 0;
    for frame in &mut frames {
        let Ok(frame) = frame else { break };
        assert_eq!(frame.start, end);
        assert!(frame.end - frame.start <= max + 1 && frame.end <= buf.len());
        end = frame.end;
    }
    assert_eq!(frames.consumed(), end);
});
