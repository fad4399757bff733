//! The event decoder on arbitrary bytes: never panics, and what it accepts survives a
//! round trip through the wire format (the webhook body carries the event that way).
#![no_main]

use event_trigger::decode::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::with_limit(1 << 20);
    let Ok(event) = decoder.decode(data) else {
        return;
    };
    assert!(data.len() <= 1 << 20, "a message over the limit was parsed");
    let wire = serde_json::to_vec(&event).expect("a decoded event serializes");
    let again = decoder
        .decode(&wire)
        .unwrap_or_else(|e| panic!("its own wire form is refused: {e}"));
    assert_eq!(again, event, "the round trip changed the event");
});
