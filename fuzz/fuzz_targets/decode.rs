//! The event decoder on arbitrary bytes: never panics; what the strict decoder accepts,
//! the coercing one (the default) accepts unchanged; and what it accepts survives a round
//! trip through the wire format (the webhook body carries the event that way), coerced
//! values coming back well typed.
#![no_main]

use event_trigger::wire::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::with_limit(1 << 20);
    let mut strict = Decoder::with_limit(1 << 20).strict_types(true);
    let decoded = decoder.decode(data);
    if let Ok(well_typed) = strict.decode(data) {
        assert_eq!(
            decoded.as_ref(),
            Ok(&well_typed),
            "coercion changed a well-typed message"
        );
    }
    let Ok(event) = decoded else {
        return;
    };
    assert!(data.len() <= 1 << 20, "a message over the limit was parsed");
    let wire = serde_json::to_vec(&event).expect("a decoded event serializes");
    let again = strict
        .decode(&wire)
        .unwrap_or_else(|e| panic!("its own wire form is refused: {e}"));
    assert_eq!(again, event, "the round trip changed the event");
});
