//! The routing key of the exchange on `user_id`.
//!
//! It must give the same worker for a user in every process of a cluster (and after a
//! restart, for checkpoints to be re-partitioned), so it is a fixed hash function, not
//! `std`'s randomly seeded one.

/// Stable 64-bit hash of a user id.
///
/// ```
/// use event_trigger::partition::user_hash;
/// assert_eq!(user_hash("user_0000001"), user_hash("user_0000001"));
/// assert_ne!(user_hash("user_0000001"), user_hash("user_0000002"));
/// ```
#[inline]
pub fn user_hash(user_id: &str) -> u64 {
    user_hash_of_bytes(user_id.as_bytes())
}

/// `user_hash` of a user id's bytes (as a message holds them, before it is decoded).
#[inline]
pub fn user_hash_of_bytes(user_id: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user_id)
}

/// The worker of `peers` that timely's exchange sends an item hashed `hash` to (its
/// `Exchange` pact: a mask when `peers` is a power of two, else the remainder). A source
/// sends each message where the exchange on `user_id` will send its event.
#[inline]
pub fn worker_of(hash: u64, peers: usize) -> usize {
    let peers = peers.max(1) as u64;
    if peers.is_power_of_two() {
        (hash & (peers - 1)) as usize
    } else {
        (hash % peers) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items exchanged by `h` arrive at `worker_of(h, peers)`, at 1 to 3 workers.
    #[test]
    fn worker_of_is_where_timely_exchanges_an_item() {
        use timely::dataflow::operators::{Exchange, Inspect, ToStream};
        for peers in 1..=3 {
            let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = got.clone();
            timely::execute(timely::Config::process(peers), move |worker| {
                let index = worker.index();
                let sink = sink.clone();
                let hashes: Vec<u64> = match index {
                    0 => (0..64).map(|i| user_hash(&i.to_string())).collect(),
                    _ => vec![],
                };
                worker.dataflow::<u64, _, _>(|scope| {
                    hashes
                        .to_stream(scope)
                        .container::<Vec<_>>()
                        .exchange(|h: &u64| *h)
                        .inspect(move |h: &u64| sink.lock().unwrap().push((*h, index)));
                });
            })
            .unwrap();
            let got = got.lock().unwrap();
            assert_eq!(got.len(), 64);
            for &(h, at) in got.iter() {
                assert_eq!(worker_of(h, peers), at, "{peers} workers");
            }
        }
    }

    #[test]
    fn value_is_fixed_across_builds_and_processes() {
        // A changed value would send restored state to the wrong worker.
        assert_eq!(user_hash(""), 0x2d06800538d394c2);
    }

    #[test]
    fn spreads_sequential_ids_evenly_over_two_and_three_workers() {
        for peers in [2u64, 3] {
            let mut counts = vec![0usize; peers as usize];
            for i in 0..30_000 {
                counts[(user_hash(&format!("user_{i:07}")) % peers) as usize] += 1;
            }
            let expected = 30_000 / peers as usize;
            for c in counts {
                assert!(c.abs_diff(expected) < expected / 20, "{c} vs {expected}");
            }
        }
    }
}
