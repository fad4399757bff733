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
    xxhash_rust::xxh3::xxh3_64(user_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

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
