use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::BufRead;
use std::path::Path;

use super::{Answers, FetchError, ProfileSourceError};
use crate::model::ProfileData;

/// `profiles.jsonl` held in memory, one JSON line per known user.
///
/// Lines stay text and are parsed on each look-up, as the HTTP API's bodies are: a
/// snapshot stands in for the API, so it should cost what parsing its answers costs.
pub struct ProfileSnapshot {
    lines: HashMap<Box<str>, Box<str>>,
}

#[derive(serde::Deserialize)]
struct UserIdOnly<'a> {
    #[serde(borrow)]
    user_id: std::borrow::Cow<'a, str>,
}

/// A snapshot that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Open(std::io::Error),
    #[error("line {line}")]
    Read {
        line: usize,
        #[source]
        source: std::io::Error,
    },
    /// Not JSON, or without a string `user_id`.
    #[error("line {line}")]
    Line {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

impl ProfileSnapshot {
    pub fn load(path: &Path) -> Result<Self, ProfileSourceError> {
        let err = |source| ProfileSourceError::Snapshot {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(|e| err(SnapshotError::Open(e)))?;
        Self::from_reader(std::io::BufReader::new(file)).map_err(err)
    }

    /// Reads the snapshot; a line without a string `user_id` is an error naming the line.
    pub fn from_reader(mut reader: impl BufRead) -> Result<Self, SnapshotError> {
        let mut lines = HashMap::new();
        // One read buffer, and each line copied into a box of its exact size: a line
        // read into a fresh `String` grows by doubling, and mimalloc keeps a block in
        // place when it shrinks by less than half, so `into_boxed_str` kept spare room
        // (6 MiB of peak RSS on a 134 MB snapshot).
        let mut line = String::new();
        let (mut repeated, mut repeats) = (None::<(Box<str>, usize)>, 0usize);
        for n in 0.. {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .map_err(|source| SnapshotError::Read {
                    line: n + 1,
                    source,
                })?;
            if read == 0 {
                break;
            }
            let mut text = line.trim_end_matches(['\n', '\r']);
            if n == 0 {
                // A byte order mark, as Windows editors write.
                text = text.strip_prefix('\u{feff}').unwrap_or(text);
            }
            if text.trim().is_empty() {
                continue;
            }
            let id = match super::scan::user_id(text) {
                Some(id) => id.into(),
                None => {
                    serde_json::from_str::<UserIdOnly<'_>>(text)
                        .map_err(|source| SnapshotError::Line {
                            line: n + 1,
                            source,
                        })?
                        .user_id
                }
            };
            match lines.entry(Box::<str>::from(id)) {
                Entry::Vacant(v) => {
                    v.insert(Box::<str>::from(text));
                }
                Entry::Occupied(mut o) => {
                    o.insert(Box::<str>::from(text));
                    repeated.get_or_insert_with(|| (o.key().clone(), n + 1));
                    repeats += 1;
                }
            }
        }
        if let Some((user, line)) = repeated {
            tracing::warn!(
                "{repeats} line(s) of the profile snapshot repeat a user_id seen on an earlier \
                 line (the first: {user:?}, again on line {line}): each user's last line is used"
            );
        }
        Ok(ProfileSnapshot { lines })
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Every user with its line, in no particular order.
    pub fn lines(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().map(|(u, l)| (&**u, &**l))
    }

    pub fn raw(&self, user_id: &str) -> Option<&str> {
        self.lines.get(user_id).map(|l| &**l)
    }

    pub fn lookup(&self, user_id: &str) -> Result<ProfileData, FetchError> {
        let line = self.raw(user_id).ok_or(FetchError::UnknownUser)?;
        if let Some(data) = super::scan::answers(line) {
            return Ok(data);
        }
        let parsed: Answers =
            serde_json::from_str(line).map_err(|e| FetchError::BadSnapshot(e.to_string()))?;
        Ok(parsed.into_data(user_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_known_users_and_reports_unknown_ones() {
        let text = "{\"user_id\":\"u1\",\"profile\":{\"user_id\":\"u1\",\"country\":\"US\"},\"visit\":{\"actions\":3},\"history\":[{\"event_id\":\"h\",\"event_type\":\"click\",\"timestamp\":1}]}\n\n";
        let snap = ProfileSnapshot::from_reader(text.as_bytes()).unwrap();
        assert_eq!(snap.len(), 1);
        let data = snap.lookup("u1").unwrap();
        assert_eq!(data.profile.country.as_deref(), Some("US"));
        assert_eq!(data.visit.unwrap().actions, 3);
        assert_eq!(data.history.len(), 1);
        assert_eq!(snap.lookup("u2"), Err(FetchError::UnknownUser));
    }

    #[test]
    fn windows_line_ends_blank_lines_and_a_last_line_without_an_end_are_read() {
        let text = "{\"user_id\":\"a\"}\r\n\r\n  \n{\"user_id\":\"b\",\"visit\":{\"actions\":2}}";
        let snap = ProfileSnapshot::from_reader(text.as_bytes()).unwrap();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap.raw("a"), Some("{\"user_id\":\"a\"}"));
        assert_eq!(snap.lookup("b").unwrap().visit.unwrap().actions, 2);
        let err = ProfileSnapshot::from_reader("{\"user_id\":\"a\"}\r\n\r\nnot json\n".as_bytes())
            .err()
            .unwrap();
        let err = crate::http_client::error_chain(&err);
        assert!(err.starts_with("line 3:"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_a_repeated_user_takes_its_last_line() {
        let text = "\u{feff}{\"user_id\":\"a\",\"profile\":{\"country\":\"US\"}}\n{\"user_id\":\"a\",\"profile\":{\"country\":\"GB\"}}\n";
        let snap = ProfileSnapshot::from_reader(text.as_bytes()).unwrap();
        assert_eq!(snap.len(), 1);
        let data = snap.lookup("a").unwrap();
        assert_eq!(data.profile.country.as_deref(), Some("GB"));
    }

    #[test]
    fn a_line_without_user_id_is_refused_with_its_number() {
        let err = ProfileSnapshot::from_reader("{\"user_id\":\"a\"}\n{\"x\":1}\n".as_bytes())
            .err()
            .unwrap();
        let err = crate::http_client::error_chain(&err);
        assert!(err.starts_with("line 2:"), "{err}");
    }
}
