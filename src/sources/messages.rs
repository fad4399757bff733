//! A batch of raw messages in one buffer: what a source hands the decoder. A reader
//! gives each message as a borrowed slice (a Kafka payload in librdkafka's buffer, a
//! line in the file reader's buffer) and it is copied once, into the batch: no
//! allocation per message. A batch's buffers go back to a small pool of the thread that
//! drops it (its decoding worker's), so that a thread's few buffers carry much of the
//! input.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

/// Messages, in the order they were read, for one worker to decode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messages {
    #[serde(with = "raw_bytes")]
    bytes: Vec<u8>,
    /// Where each message ends in `bytes`.
    ends: Vec<usize>,
    /// The worker that decodes them (`crate::sources::router`).
    pub worker: u32,
}

/// Buffers kept per thread at most: more than a source's batches in flight at once.
const POOLED: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<(Vec<u8>, Vec<usize>)>> = const { RefCell::new(Vec::new()) };
}

impl Drop for Messages {
    fn drop(&mut self) {
        if self.bytes.capacity() == 0 {
            return;
        }
        let mut buffers = (
            std::mem::take(&mut self.bytes),
            std::mem::take(&mut self.ends),
        );
        buffers.0.clear();
        buffers.1.clear();
        // Not at all while the thread ends (its pool is gone).
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED {
                pool.push(buffers);
            }
        });
    }
}

impl Messages {
    /// An empty batch, in buffers of an earlier one when this thread has some, with
    /// room for `bytes` bytes of messages.
    pub fn recycled(bytes: usize) -> Messages {
        let (mut buf, ends) = POOL
            .try_with(|pool| pool.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        buf.reserve(bytes);
        Messages {
            bytes: buf,
            ends,
            worker: 0,
        }
    }

    pub fn push(&mut self, message: &[u8]) {
        self.bytes.extend_from_slice(message);
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of all messages together.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let message = &self.bytes[start..end];
            start = end;
            message
        })
    }
}

/// The bytes as one byte string in serde formats (bincode between processes), not as a
/// sequence of numbers.
mod raw_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

impl<'a> FromIterator<&'a [u8]> for Messages {
    fn from_iter<I: IntoIterator<Item = &'a [u8]>>(messages: I) -> Messages {
        let mut batch = Messages::default();
        messages.into_iter().for_each(|m| batch.push(m));
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_back_whole_and_in_order_empty_ones_too() {
        let input: [&[u8]; 4] = [b"first", b"", b"{\"a\":1}", b"last"];
        let batch: Messages = input.iter().copied().collect();
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.bytes_len(), 5 + 7 + 4);
        assert_eq!(batch.iter().collect::<Vec<_>>(), input);
        assert!(Messages::default().is_empty());
        assert_eq!(Messages::default().iter().count(), 0);
    }

    /// Between processes a batch goes as bincode: it comes back whole, its worker too.
    #[test]
    fn a_batch_crosses_processes_whole() {
        let input: [&[u8]; 3] = [b"{\"user_id\":\"u\"}", b"", b"\xff\x00"];
        let mut batch: Messages = input.iter().copied().collect();
        batch.worker = 3;
        let bytes = bincode::serialize(&batch).unwrap();
        assert!(bytes.len() < 16 + 3 * 8 + 8 + 20, "{} bytes", bytes.len());
        let back: Messages = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn a_dropped_batch_lends_its_buffers_to_the_next_one_empty() {
        let mut batch = Messages::recycled(1 << 16);
        batch.push(b"hello");
        let at = batch.bytes.as_ptr();
        drop(batch);
        let again = Messages::recycled(1 << 16);
        assert!(again.is_empty() && again.bytes_len() == 0);
        assert_eq!(again.bytes.as_ptr(), at);
    }
}
