//! A batch of raw messages in one buffer: what a source hands the decoder. A reader
//! gives each message as a borrowed slice (a Kafka payload in librdkafka's buffer, a
//! line in the file reader's buffer) and it is copied once, into the batch: no
//! allocation per message. A batch's buffers go back to a small per-thread pool when
//! it is dropped (the decoder drops it on the thread that read it), so the same few
//! buffers carry the whole input.

use std::cell::RefCell;

/// Messages, in the order they were read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Messages {
    bytes: Vec<u8>,
    /// Where each message ends in `bytes`.
    ends: Vec<usize>,
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
        Messages { bytes: buf, ends }
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
