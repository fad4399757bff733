//! A string kept in place when it is short, shared when it is long: an event's id
//! (`evt_000000001`) without an allocation per event, its name, type, platform ...
//! without a look-up in the decoder's interner and two atomic reference counts each.
//! Each event's id was its own `Arc<str>`, allocated when decoded and freed once
//! applied: about a third of the per-event path's allocator samples, for a dozen bytes.
//! Not `compact_str` or `smartstring` (in the dependency tree through other crates): a
//! clone of their long strings copies them, where a long name here shares the decoder's
//! interned `Arc`.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes held in place.
const INLINE: usize = 22;

#[derive(Clone)]
pub struct SmallText(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..len]` is the text (UTF-8: made only from `&str`).
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Shared(Arc<str>),
}

impl SmallText {
    /// Whether `s` is kept in place (`From<&str>` allocates for longer ones).
    pub fn fits(s: &str) -> bool {
        s.len() <= INLINE
    }

    /// The shared copy of a text too long to keep in place.
    pub fn shared(&self) -> Option<&Arc<str>> {
        match &self.0 {
            Repr::Shared(s) => Some(s),
            Repr::Inline { .. } => None,
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                let b = &bytes[..usize::from(*len)];
                // SAFETY: an inline text is a copy of a whole `&str` (`From<&str>`), so
                // these bytes are valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Repr::Shared(s) => s,
        }
    }
}

impl Default for SmallText {
    fn default() -> SmallText {
        SmallText::from("")
    }
}

impl From<&str> for SmallText {
    fn from(s: &str) -> SmallText {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            SmallText(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            SmallText(Repr::Shared(Arc::from(s)))
        }
    }
}

impl From<String> for SmallText {
    fn from(s: String) -> SmallText {
        SmallText::from(s.as_str())
    }
}

impl From<Arc<str>> for SmallText {
    fn from(s: Arc<str>) -> SmallText {
        if s.len() <= INLINE {
            SmallText::from(&*s)
        } else {
            SmallText(Repr::Shared(s))
        }
    }
}

impl From<&SmallText> for Arc<str> {
    fn from(s: &SmallText) -> Arc<str> {
        match &s.0 {
            Repr::Shared(s) => s.clone(),
            Repr::Inline { .. } => Arc::from(s.as_str()),
        }
    }
}

impl Deref for SmallText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SmallText {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for SmallText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SmallText {}

impl fmt::Debug for SmallText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SmallText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string in serde formats, as `Arc<str>` is: the exchange between processes and the
/// checkpoints' pending events read and write the same bytes as before.
impl Serialize for SmallText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SmallText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SmallText, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = SmallText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SmallText, E> {
                Ok(SmallText::from(v))
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the inline limit, ASCII and not, reads back as it went in,
    /// and takes the same bytes as `Arc<str>` in bincode and JSON.
    #[test]
    fn texts_of_every_length_come_back_and_serialize_as_strings() {
        for n in 0..=INLINE + 3 {
            for unit in ["a", "é"] {
                // Distinct characters, so that a byte copied to the wrong place shows.
                let s: String = (0..n)
                    .map(|i| match i % 3 {
                        2 => unit.to_string(),
                        _ => char::from(b'b' + i as u8).to_string(),
                    })
                    .collect();
                let t = SmallText::from(s.as_str());
                assert_eq!(&*t, s);
                assert_eq!(t, SmallText::from(s.clone()));
                assert_eq!(t, SmallText::from(Arc::<str>::from(s.as_str())));
                assert_eq!(&*Arc::<str>::from(&t), s);
                let arc: Arc<str> = Arc::from(s.as_str());
                assert_eq!(
                    bincode::serialize(&t).unwrap(),
                    bincode::serialize(&arc).unwrap()
                );
                assert_eq!(
                    serde_json::to_string(&t).unwrap(),
                    serde_json::to_string(&arc).unwrap()
                );
                let back: SmallText =
                    bincode::deserialize(&bincode::serialize(&t).unwrap()).unwrap();
                assert_eq!(back, t);
                let back: SmallText =
                    serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
                assert_eq!(back, t);
                assert_eq!(format!("{t:?}"), format!("{s:?}"));
            }
        }
        assert!(matches!(
            SmallText::from("evt_000000001").0,
            Repr::Inline { .. }
        ));
        assert!(matches!(SmallText::from("x".repeat(23)).0, Repr::Shared(_)));
    }
}
