//! The dead-letter file (`dead-letter.path`): what the job could not handle, one JSON
//! object per line with the reason and the original bytes, so that nothing is dropped
//! silently: messages that are not valid events, and webhook deliveries that still
//! failed after their retries.
//!
//! Records are appended and synced to disk before the job moves on (the work they stand
//! for counts as done, and its offsets may be committed right after), so they survive a
//! crash of the machine as well as of the job. One file per process: processes on one
//! machine need paths of their own (`EVENT_TRIGGER__DEAD_LETTER__PATH` per process).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("dead-letter.path: {path}: {source}")]
pub struct DeadLetterError {
    path: PathBuf,
    source: std::io::Error,
}

/// Why a record is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A message that is not a valid event (the message as read).
    InvalidMessage,
    /// A webhook delivery that failed after its retries (the body it would have sent).
    WebhookFailed,
}

/// One line of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub kind: Kind,
    pub reason: String,
    /// When it was written, in ms since the epoch.
    pub at_ms: u64,
    /// The original bytes, when they are UTF-8...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ...and in hex when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
}

impl DeadLetter {
    pub fn new(kind: Kind, reason: impl Into<String>, bytes: &[u8], at_ms: u64) -> Self {
        let (payload, payload_hex) = match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(hex::encode(bytes))),
        };
        DeadLetter {
            kind,
            reason: reason.into(),
            at_ms,
            payload,
            payload_hex,
        }
    }

    /// The original bytes back.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.payload, &self.payload_hex) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(h)) => hex::decode(h).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// The dead-letter file of this process, shared by its workers.
#[derive(Clone)]
pub struct DeadLetters {
    file: Arc<Mutex<File>>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeadLetters({})", self.path.display())
    }
}

impl DeadLetters {
    /// Opens `path` for appending, creating it (and its directory) if need be.
    pub fn open(path: &Path) -> Result<DeadLetters, DeadLetterError> {
        let err = |source| DeadLetterError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        Ok(DeadLetters {
            file: Arc::new(Mutex::new(file)),
            path: Arc::new(path.to_path_buf()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `letters`, in one write, and syncs them to disk.
    pub fn write(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        if letters.is_empty() {
            return Ok(());
        }
        let err = |source| DeadLetterError {
            path: self.path.to_path_buf(),
            source,
        };
        let mut buf = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut buf, letter).map_err(|e| err(e.into()))?;
            buf.push(b'\n');
        }
        // A worker that panicked while holding the lock left the file as it was.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&buf).map_err(err)?;
        file.sync_data().map_err(err)
    }

    /// Reads a dead-letter file back (tests and tools).
    pub fn read(path: &Path) -> std::io::Result<Vec<DeadLetter>> {
        std::fs::read_to_string(path)?
            .lines()
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_appended_and_read_back_with_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dead.jsonl");
        let dl = DeadLetters::open(&path).unwrap();
        let text = DeadLetter::new(Kind::InvalidMessage, "bad_json", b"not json\n\"x\"", 1);
        let binary = DeadLetter::new(Kind::InvalidMessage, "bad_json", &[0xff, 0, 1], 2);
        dl.write(std::slice::from_ref(&text)).unwrap();
        dl.write(std::slice::from_ref(&binary)).unwrap();
        // Reopened: appends, keeps what was there.
        let again = DeadLetters::open(&path).unwrap();
        let failed = DeadLetter::new(Kind::WebhookFailed, "HTTP 500", b"{}", 3);
        again.write(std::slice::from_ref(&failed)).unwrap();
        let back = DeadLetters::read(&path).unwrap();
        assert_eq!(back, [text, binary.clone(), failed]);
        assert_eq!(back[1].bytes(), [0xff, 0, 1]);
        assert_eq!(back[0].bytes(), b"not json\n\"x\"");
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(
            line.starts_with(r#"{"kind":"invalid_message","reason":"bad_json""#),
            "{line}"
        );
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = DeadLetters::open(&file.join("x.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("dead-letter.path: "), "{err}");
    }
}
