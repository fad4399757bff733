//! A user's state as checkpoint parts (v2) and RocksDB keep it: bincode of the profile,
//! visit and times, with the history as its compact bytes (`History::encoded`), not as
//! the list of its entries. The history's string ids are the writing process's: a part
//! carries that process's dictionary, and reading maps its ids (`Ids`).

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::history::History;
use crate::history::codec::Malformed;
use crate::model::{Profile, Time, UserState, Visit};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{0}")]
    Bincode(#[from] bincode::Error),
    #[error("{0}")]
    History(#[from] Malformed),
}

/// Bytes, written by bincode as its length and the bytes (and read back in one piece,
/// not byte by byte as a `Vec<u8>` would be).
struct Blob<'a>(&'a [u8]);

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct OwnedBlob(Vec<u8>);

impl<'de> Deserialize<'de> for OwnedBlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OwnedBlob;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<OwnedBlob, E> {
                Ok(OwnedBlob(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<OwnedBlob, E> {
                Ok(OwnedBlob(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[derive(Serialize)]
struct StoredRef<'a> {
    profile: &'a Profile,
    visit: Option<&'a Visit>,
    history: Blob<'a>,
    last_activity: Time,
    ttl_mark: Time,
    refetch_after: Option<Time>,
}

/// A state as read, its history not yet decoded.
#[derive(Deserialize)]
pub struct Stored {
    profile: Profile,
    visit: Option<Visit>,
    history: OwnedBlob,
    last_activity: Time,
    ttl_mark: Time,
    refetch_after: Option<Time>,
}

/// How the history ids of what is read map to this process's: the same (written here),
/// or through the writer's dictionary.
#[derive(Clone, Debug, Default)]
pub enum Ids {
    #[default]
    Here,
    Theirs(Arc<Vec<String>>),
}

impl Ids {
    /// The ids of a part written with `dict`: this process's when every string of it has
    /// the same id here (always so when this process restores first, and for parts it
    /// wrote itself), else mapped string by string.
    pub fn of_dictionary(dict: Vec<String>) -> Ids {
        let same = dict
            .iter()
            .enumerate()
            .all(|(i, s)| crate::dict::intern(s) == Some(i as u32));
        if same {
            Ids::Here
        } else {
            Ids::Theirs(Arc::new(dict))
        }
    }
}

impl Stored {
    pub fn into_state(self, ids: &Ids) -> Result<UserState, Malformed> {
        let history = match ids {
            Ids::Here => History::from_encoded(&self.history.0, None)?,
            Ids::Theirs(dict) => {
                let lookup = |id: u32| dict.get(id as usize).cloned();
                History::from_encoded(&self.history.0, Some(&lookup))?
            }
        };
        Ok(UserState {
            profile: Arc::new(self.profile),
            visit: self.visit.map(Arc::new),
            history: Arc::new(history),
            last_activity: self.last_activity,
            ttl_mark: self.ttl_mark,
            refetch_after: self.refetch_after,
        })
    }
}

/// Appends `state`'s encoding to `out`.
pub fn encode_into(out: &mut Vec<u8>, state: &UserState) -> Result<(), CodecError> {
    let stored = StoredRef {
        profile: &state.profile,
        visit: state.visit.as_deref(),
        history: Blob(state.history.encoded()),
        last_activity: state.last_activity,
        ttl_mark: state.ttl_mark,
        refetch_after: state.refetch_after,
    };
    bincode::serialize_into(out, &stored)?;
    Ok(())
}

pub fn encode(state: &UserState) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256 + state.history.encoded_len());
    encode_into(&mut out, state)?;
    Ok(out)
}

/// A state encoded by this process (RocksDB's values).
pub fn decode(bytes: &[u8]) -> Result<UserState, CodecError> {
    let stored: Stored = bincode::deserialize(bytes)?;
    Ok(stored.into_state(&Ids::Here)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HistoryEntry, ProfileData, RawJson};

    fn state() -> UserState {
        let mut s = UserState::from_profile(
            ProfileData {
                profile: Profile {
                    country: Some("US".into()),
                    ..Default::default()
                },
                visit: Some(Visit {
                    actions: 3,
                    ..Default::default()
                }),
                history: vec![HistoryEntry {
                    event_id: Some("h1".into()),
                    event_name: Some("codec_test_name".into()),
                    event_type: Some("page_view".into()),
                    timestamp: 5,
                    parameters: Some(RawJson::parse(r#"{"utm_source":"codec_test"}"#).unwrap()),
                }],
            },
            10,
        );
        s.refetch_after = Some(20);
        s
    }

    #[test]
    fn a_state_comes_back_here_and_in_another_process() {
        let s = state();
        let bytes = encode(&s).unwrap();
        assert_eq!(decode(&bytes).unwrap(), s);
        let theirs: Vec<String> = crate::dict::prefix(crate::dict::len())
            .map(str::to_string)
            .collect();
        let stored: Stored = bincode::deserialize(&bytes).unwrap();
        let mapped = Ids::Theirs(Arc::new(theirs));
        assert_eq!(stored.into_state(&mapped).unwrap(), s);
        assert!(decode(&bytes[..bytes.len() - 2]).is_err());
    }

    #[test]
    fn a_dictionary_written_here_maps_to_the_same_ids() {
        let _ = encode(&state()).unwrap();
        let ours: Vec<String> = crate::dict::prefix(crate::dict::len())
            .map(str::to_string)
            .collect();
        assert!(matches!(Ids::of_dictionary(ours), Ids::Here));
        let shuffled = vec!["codec_test".to_string(), "page_view".to_string()];
        assert!(matches!(Ids::of_dictionary(shuffled), Ids::Theirs(_)));
    }
}
