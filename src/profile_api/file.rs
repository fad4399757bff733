use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::BufRead;
use std::ops::Range;
use std::path::Path;

use super::{Answers, FetchError, ProfileSourceError};
use crate::model::ProfileData;
use crate::small_pages::SmallPages;
use crate::sources::file::LineReader;

/// `profiles.jsonl` held in memory, one JSON line per known user.
///
/// Lines stay text and are parsed on each look-up, as the HTTP API's bodies are: a
/// snapshot stands in for the API, so it should cost what parsing its answers costs.
/// The text is one buffer of small pages (`SmallPages`: faulted in at a fraction of
/// what huge pages cost on a virtual machine), each user's line a range of it.
pub struct ProfileSnapshot {
    text: SmallPages,
    lines: HashMap<Box<str>, Range<usize>>,
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
    pub fn from_reader(reader: impl BufRead) -> Result<Self, SnapshotError> {
        let mut reader = LineReader::over(reader);
        let mut text = SmallPages::default();
        let mut lines = HashMap::new();
        let (mut repeated, mut repeats) = (None::<(Box<str>, usize)>, 0usize);
        for n in 0.. {
            let read_err = |source| SnapshotError::Read {
                line: n + 1,
                source,
            };
            let start = text.len();
            let mut copied = Ok(());
            let read = reader.read_line(&mut |line| copied = text.extend_from_slice(line));
            let more = read.map_err(read_err)?;
            copied.map_err(read_err)?;
            if !more {
                break;
            }
            let Ok(line) = std::str::from_utf8(&text.as_slice()[start..]) else {
                // As `BufRead::read_line` says it.
                let e = std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                );
                return Err(read_err(e));
            };
            let mut line = line.trim_end_matches(['\n', '\r']);
            let end = start + line.len();
            if n == 0 {
                // A byte order mark, as Windows editors write.
                line = line.strip_prefix('\u{feff}').unwrap_or(line);
            }
            if line.trim().is_empty() {
                text.truncate(start);
                continue;
            }
            let id: Box<str> = match super::scan::user_id(line) {
                Some(id) => id.into(),
                None => serde_json::from_str::<UserIdOnly<'_>>(line)
                    .map_err(|source| SnapshotError::Line {
                        line: n + 1,
                        source,
                    })?
                    .user_id
                    .into(),
            };
            let range = end - line.len()..end;
            text.truncate(end);
            // A repeated user's earlier line stays in the text, unused.
            match lines.entry(id) {
                Entry::Vacant(v) => {
                    v.insert(range);
                }
                Entry::Occupied(mut o) => {
                    o.insert(range);
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
        Ok(ProfileSnapshot { text, lines })
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Every user with its line, in no particular order.
    pub fn lines(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().map(|(u, l)| (&**u, self.line(l.clone())))
    }

    pub fn raw(&self, user_id: &str) -> Option<&str> {
        self.lines.get(user_id).map(|l| self.line(l.clone()))
    }

    fn line(&self, range: Range<usize>) -> &str {
        let bytes = &self.text.as_slice()[range];
        // SAFETY: each range is part of a line checked to be UTF-8 when it was read
        // (`from_reader`), cut at ASCII line ends and after a whole byte order mark, so
        // at character boundaries; the text is only appended to since, and cut back
        // only past the last range. Checked again per look-up, these ~1.3 KB lines cost
        // a few hundred instructions each.
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        unsafe { std::str::from_utf8_unchecked(bytes) }
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

    /// Lines longer than the reader's buffer are read whole, each user's line exactly
    /// as it was (line ends, the mark and blank lines left out); a line that is not
    /// UTF-8 is refused with its number, as the standard reader words it.
    #[test]
    fn lines_across_the_readers_buffer_are_read_whole() {
        let mut text = String::from("\u{feff}");
        let mut want = Vec::new();
        for u in 0..300 {
            let line = format!(
                r#"{{"user_id":"u{u}","profile":{{"city":"{}"}}}}"#,
                "é".repeat(u % 40)
            );
            text.push_str(&line);
            text.push_str(["\n", "\r\n", "\n\n \r\n"][u % 3]);
            want.push((format!("u{u}"), line));
        }
        for capacity in [1, 7, 64, 1 << 16] {
            let reader = std::io::BufReader::with_capacity(capacity, text.as_bytes());
            let snap = ProfileSnapshot::from_reader(reader).unwrap();
            assert_eq!(snap.len(), want.len());
            for (user, line) in &want {
                assert_eq!(snap.raw(user), Some(line.as_str()), "{capacity}");
            }
            let mut lines: Vec<(String, String)> = snap
                .lines()
                .map(|(u, l)| (u.to_string(), l.to_string()))
                .collect();
            lines.sort_by_key(|(u, _)| u[1..].parse::<u32>().unwrap());
            assert_eq!(lines, want);
        }
        let bad = b"{\"user_id\":\"a\"}\n{\"user_id\":\"b\xff\"}\n";
        let err = ProfileSnapshot::from_reader(&bad[..]).err().unwrap();
        let err = crate::http_client::error_chain(&err);
        assert_eq!(err, "line 2: stream did not contain valid UTF-8");
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
