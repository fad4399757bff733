//! Which worker decodes a message a source read: the worker that holds its user, so that
//! decoding is shared by the workers as the users are, not done all by the worker that
//! reads (a file is read by one worker; at `-w 2` that worker decoded every event and
//! the other waited on it).
//!
//! A user's messages from one source worker all take one path (this worker, the decoding
//! worker, the user's worker), and timely keeps the order between two workers, so a
//! user's events are applied in the order they were read, as before. The user is found
//! by `wire::route::user_id_of` without decoding; when it cannot tell, the message is
//! decoded here to know (and decoded again where it goes). A message that does not
//! decode stays with this worker, which counts it and writes its dead letter. A user held
//! by another process is decoded by one of this process's workers (chosen by the user, so
//! always the same one) and its event crosses to the other process as before, so a
//! message's dead letter stays in the process that read it.

use crate::partition::{user_hash, user_hash_of_bytes, worker_of};
use crate::sources::messages::Messages;
use crate::wire::Decoder;
use crate::wire::route::user_id_of;

/// Where the source's worker is in the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    /// This worker.
    pub index: usize,
    /// Workers in all processes.
    pub peers: usize,
    /// Workers in each process (numbered together: process `p` has workers
    /// `p * per_process ..`).
    pub per_process: usize,
}

/// Sorts a source's messages into one batch per decoding worker.
pub struct Router {
    place: Place,
    /// The first worker of this process.
    first_local: usize,
    /// For the messages whose user the scan cannot tell.
    decoder: Decoder,
    /// By worker, from `first_local`.
    batches: Vec<Messages>,
    /// A batch is handed on once it holds this many bytes.
    batch_bytes: usize,
}

impl Router {
    pub fn new(place: Place, decoder: Decoder, batch_bytes: usize) -> Router {
        let per_process = place.per_process.clamp(1, place.peers.max(1));
        let place = Place {
            per_process,
            ..place
        };
        Router {
            place,
            first_local: place.index - place.index % per_process,
            decoder,
            batches: (0..per_process).map(|_| Messages::default()).collect(),
            batch_bytes,
        }
    }

    /// The worker that decodes `msg`.
    pub fn worker_for(&mut self, msg: &[u8]) -> usize {
        let Place {
            index,
            peers,
            per_process,
        } = self.place;
        let hash = match user_id_of(msg) {
            Some(user) => user_hash_of_bytes(user),
            None => match self.decoder.decode(msg) {
                Ok(ev) => user_hash(&ev.user_id),
                Err(_) => return index,
            },
        };
        let owner = worker_of(hash, peers);
        if (self.first_local..self.first_local + per_process).contains(&owner) {
            owner
        } else {
            self.first_local + worker_of(hash, per_process)
        }
    }

    /// Adds `msg` to its worker's batch; a batch that is full goes to `give`.
    #[inline]
    pub fn push(&mut self, msg: &[u8], give: &mut impl FnMut(Messages)) {
        // Alone in its process (`-w 1`): no scan, not even the call.
        let worker = match self.place.per_process {
            1 => self.place.index,
            _ => self.worker_for(msg),
        };
        let batch = &mut self.batches[worker - self.first_local];
        if batch.is_empty() {
            *batch = Messages::recycled(self.batch_bytes + 4096);
            batch.worker = worker as u32;
        }
        batch.push(msg);
        if batch.bytes_len() >= self.batch_bytes {
            give(std::mem::take(batch));
        }
    }

    /// Hands on every batch that holds a message.
    pub fn flush(&mut self, give: &mut impl FnMut(Messages)) {
        for batch in &mut self.batches {
            if !batch.is_empty() {
                give(std::mem::take(batch));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(index: usize, peers: usize, per_process: usize) -> Router {
        let place = Place {
            index,
            peers,
            per_process,
        };
        Router::new(place, Decoder::default(), 64)
    }

    fn event(user: &str) -> Vec<u8> {
        format!(r#"{{"event_id":"e","user_id":{user},"event_type":"c"}}"#).into_bytes()
    }

    /// A message goes to its user's worker, however its user id is written; a message
    /// whose user the scan cannot tell and that does not decode stays with the worker
    /// that read it.
    #[test]
    fn a_message_goes_to_its_users_worker() {
        for peers in [2, 3, 4] {
            let mut r = router(1, peers, peers);
            for i in 0..200 {
                let user = format!("user_{i}");
                let owner = worker_of(user_hash(&user), peers);
                assert_eq!(r.worker_for(&event(&format!("\"{user}\""))), owner);
                let escaped = format!("\"{}\\u005f{}\"", "user", i);
                assert_eq!(r.worker_for(&event(&escaped)), owner, "decoded to know");
                let number = i.to_string();
                assert_eq!(
                    r.worker_for(&event(&number)),
                    worker_of(user_hash(&number), peers)
                );
            }
            assert_eq!(r.worker_for(b"{not json"), 1);
            assert_eq!(r.worker_for(&event("\"bad \\u00 escape\"")), 1);
        }
        let mut alone = router(0, 1, 1);
        assert_eq!(alone.worker_for(b"{not json"), 0);
        assert_eq!(alone.worker_for(&event("\"u\"")), 0);
    }

    /// With two processes of two workers, a user of the other process is decoded by a
    /// worker of this one, always the same for that user.
    #[test]
    fn a_user_of_another_process_is_decoded_in_this_one() {
        let mut r = router(2, 4, 2);
        let mut seen = [0usize; 4];
        for i in 0..400 {
            let user = format!("user_{i}");
            let at = r.worker_for(&event(&format!("\"{user}\"")));
            assert!((2..4).contains(&at), "{at}");
            let owner = worker_of(user_hash(&user), 4);
            if owner >= 2 {
                assert_eq!(at, owner);
            }
            assert_eq!(r.worker_for(&event(&format!("\"{user}\""))), at);
            seen[at] += 1;
        }
        assert!(seen[2] > 100 && seen[3] > 100, "{seen:?}");
    }

    /// Batches fill per worker, in the order read, each handed on when full and the
    /// rest on a flush.
    #[test]
    fn batches_are_per_worker_in_order() {
        let mut r = router(0, 2, 2);
        let mut out = Vec::new();
        let msgs: Vec<Vec<u8>> = (0..40).map(|i| event(&format!("\"u{i}\""))).collect();
        for m in &msgs {
            r.push(m, &mut |b| out.push(b));
        }
        r.flush(&mut |b| out.push(b));
        let mut by_worker: [Vec<Vec<u8>>; 2] = Default::default();
        for b in &out {
            assert!(!b.is_empty());
            by_worker[b.worker as usize].extend(b.iter().map(<[u8]>::to_vec));
        }
        for (w, got) in by_worker.iter().enumerate() {
            let want: Vec<Vec<u8>> = msgs
                .iter()
                .filter(|m| r.worker_for(m) == w)
                .cloned()
                .collect();
            assert_eq!(got, &want);
            assert!(!want.is_empty());
        }
    }
}
