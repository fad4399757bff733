use super::*;

/// A small deterministic generator, so that a failure names its seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.next(xs.len() as u64) as usize]
    }

    fn text(&mut self) -> String {
        let s = self.pick(&[
            "page_view",
            "",
            "Cart",
            "https://shop.example.com/p/42",
            "q\"uote",
            "back\\slash",
            "line\nbreak",
            "é ü ß",
            "\u{1}ctl",
        ]);
        if self.next(4) == 0 {
            format!("{s}{}", self.next(1_000_000))
        } else {
            s.to_string()
        }
    }

    /// Some JSON value, compact or (sometimes) with whitespace.
    fn json(&mut self, depth: u32) -> serde_json::Value {
        use serde_json::{Value, json};
        match self.next(if depth > 2 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => json!(self.next(2) == 0),
            2 => json!(self.next(100_000) as i64 - 50_000),
            3 => json!(self.next(100_000) as f64 / 7.0),
            4 => json!(self.text()),
            5 => Value::Array((0..self.next(4)).map(|_| self.json(depth + 1)).collect()),
            _ => Value::Object(
                (0..self.next(5))
                    .map(|_| (self.text(), self.json(depth + 1)))
                    .collect(),
            ),
        }
    }

    /// `parameters` as producers send them.
    pub(crate) fn parameters(&mut self) -> Option<RawJson> {
        let mut obj = serde_json::Map::new();
        for key in ["utm_source", "utm_campaign", "utm_term"] {
            if self.next(3) > 0 {
                obj.insert(key.into(), self.text().into());
            }
        }
        if self.next(2) == 0 {
            obj.insert("custom_params".into(), self.json(1));
        }
        let text = match self.next(6) {
            0 => return None,
            1 => serde_json::to_string_pretty(&obj).unwrap(),
            _ => serde_json::to_string(&obj).unwrap(),
        };
        Some(RawJson::parse(&text).unwrap())
    }

    pub(crate) fn entry(&mut self) -> HistoryEntry {
        let opt = |r: &mut Rng| (r.next(5) > 0).then(|| r.text().into());
        HistoryEntry {
            event_id: opt(self),
            event_name: opt(self),
            event_type: opt(self),
            timestamp: self.next(u64::MAX) as i64,
            parameters: self.parameters(),
        }
    }
}

#[test]
fn random_histories_write_the_json_the_wire_model_writes() {
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let entries: Vec<HistoryEntry> = (0..rng.next(12)).map(|_| rng.entry()).collect();
        let h = History::from_entries(&entries);
        assert_eq!(h.len(), entries.len());
        let mut body = Vec::new();
        h.write_json(&mut body);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            serde_json::to_string(&entries).unwrap(),
            "seed {seed}"
        );
        assert_eq!(
            serde_json::to_string_pretty(&h).unwrap(),
            serde_json::to_string_pretty(&entries).unwrap(),
            "seed {seed}"
        );
        assert_eq!(h.to_entries(), entries, "seed {seed}");
        let back: History = bincode::deserialize(&bincode::serialize(&h).unwrap()).unwrap();
        assert_eq!(back, h, "seed {seed}");
    }
}

#[test]
fn the_newest_entries_are_kept_and_space_is_reclaimed() {
    let mut rng = Rng::new(7);
    let entries: Vec<HistoryEntry> = (0..500).map(|_| rng.entry()).collect();
    let mut h = History::default();
    for (i, e) in entries.iter().enumerate() {
        h.push(e);
        h.keep_newest(100);
        assert_eq!(h.len(), (i + 1).min(100));
        assert_eq!(
            h.iter().next().unwrap().to_owned(),
            entries[(i + 1).saturating_sub(100)]
        );
    }
    assert_eq!(h.to_entries(), entries[400..]);
    assert!(h.bytes.len() - h.head <= h.encoded_len() && h.head <= h.bytes.len() / 4 + 1);
    h.keep_newest(0);
    assert!(h.is_empty() && h.bytes.is_empty());
}

/// Spare room is memory every user pays for: the buffer asks for no more than the
/// allocator's block for its entries (their bytes rounded up to a size class, by at most
/// a quarter), which the allocator would give it anyway; and it grows only when that is
/// full, not at every entry.
#[test]
fn a_history_asks_for_no_room_beyond_its_entries() {
    let fits = |b: &Vec<u8>| {
        b.len() <= b.capacity() && b.capacity() <= crate::allocator::block_size(b.len())
    };
    let mut rng = Rng::new(11);
    let mut h = History::default();
    let mut grown = 0;
    for _ in 0..200 {
        let before = h.bytes.capacity();
        h.push(&rng.entry());
        assert!(
            fits(&h.bytes),
            "{} of {}",
            h.bytes.len(),
            h.bytes.capacity()
        );
        grown += usize::from(h.bytes.capacity() != before);
    }
    assert!(grown < 150, "grew at {grown} of 200 entries");
    let mut other = History::default();
    other.extend(&h);
    assert!(fits(&other.bytes));
}

#[test]
fn histories_extend_and_entries_are_found_by_offset() {
    let mut rng = Rng::new(9);
    let a: Vec<HistoryEntry> = (0..3).map(|_| rng.entry()).collect();
    let b: Vec<HistoryEntry> = (0..4).map(|_| rng.entry()).collect();
    let mut h = History::from_entries(&a);
    h.extend(&History::from_entries(&b));
    assert_eq!(h.to_entries(), [a, b.clone()].concat());
    let offsets: Vec<usize> = h.entries().map(|(at, _)| at).collect();
    for (at, e) in offsets.iter().zip(h.iter()) {
        assert_eq!(h.at(*at), Some(e));
    }
    h.keep_newest(2);
    assert_eq!(h.to_entries(), b[2..]);
}

#[test]
fn encoded_histories_come_back_here_and_in_another_process() {
    let mut rng = Rng::new(11);
    let entries: Vec<HistoryEntry> = (0..20).map(|_| rng.entry()).collect();
    let h = History::from_entries(&entries);
    assert_eq!(History::from_encoded(h.encoded(), None).unwrap(), h);
    // Another process: its ids are offsets into its own list of strings.
    let theirs: Vec<String> = crate::dict::prefix(crate::dict::len())
        .map(str::to_string)
        .collect();
    let lookup = |id: u32| theirs.get(id as usize).cloned();
    assert_eq!(
        History::from_encoded(h.encoded(), Some(&lookup)).unwrap(),
        h
    );
    let cut = &h.encoded()[..h.encoded().len() - 1];
    assert!(History::from_encoded(cut, None).is_err());
    assert!(History::from_encoded(cut, Some(&lookup)).is_err());
    let unknown = |_: u32| None;
    let needs_ids = History::from_entries(&[HistoryEntry {
        event_id: None,
        event_name: Some("page_view".into()),
        event_type: None,
        timestamp: 1,
        parameters: None,
    }]);
    assert!(History::from_encoded(needs_ids.encoded(), Some(&unknown)).is_err());
}

/// Bytes in this process's ids are taken as written (a checksum covered them): an entry
/// damaged past it reads with empty strings and its parameters as `null`, and its
/// history still renders as JSON. Bytes that do not divide into entries are refused.
#[test]
fn a_damaged_entry_in_this_processs_ids_reads_as_empty_strings_and_null() {
    let unknown = (u64::from(u32::MAX - 1) << 1) | 1;
    // Flags: a name and parameters; timestamp 1; a name and an object key nobody has.
    let mut body = vec![2 | 8, 2];
    codec::put_varint(&mut body, unknown);
    body.push(5);
    codec::put_varint(&mut body, unknown + 1);
    body.push(0);
    let mut bytes = Vec::new();
    codec::put_varint(&mut bytes, body.len() as u64);
    bytes.extend_from_slice(&body);

    let h = History::from_encoded(&bytes, None).unwrap();
    assert_eq!(h.len(), 1);
    let e = h.iter().next().unwrap();
    assert_eq!((e.event_name, e.timestamp), (Some(""), 1));
    let mut json = Vec::new();
    h.write_json(&mut json);
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(value[0]["parameters"], serde_json::Value::Null);
    assert_eq!(value[0]["event_name"], "");

    assert!(History::from_encoded(&bytes[..bytes.len() - 1], None).is_err());
    let lookup = |_: u32| None;
    assert!(History::from_encoded(&bytes, Some(&lookup)).is_err());
}
