//! The users of a checkpoint, read back and handed to the user-state operator, which
//! routes them by the same hash as the events: a checkpoint written by any number of
//! workers restores onto any other number.

use std::sync::Arc;

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::checkpoint::{ChainReader, Restore};
use crate::model::{SavedUser, Text, Time};

/// Users emitted per activation: a restore holds this many decoded users at a time, not
/// a whole part (with RocksDB, state may not fit in memory).
const CHUNK: usize = 8192;

/// Emits the users of `restore`'s parts, each worker's part (with the parts it builds
/// on, if it is a delta) read by one worker (part `i` by worker `i % peers`), a chunk
/// per activation; then ends.
pub fn restore_source<'s>(
    scope: Scope<'s, Time>,
    restore: Option<Arc<Restore>>,
) -> Stream<'s, Time, Vec<(Text, SavedUser)>> {
    let (index, peers) = (scope.index(), scope.peers());
    source(scope, "Restore", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut chains: Vec<ChainReader> = restore
            .map(|r| r.part_chains())
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % peers == index)
            .map(|(_, chain)| ChainReader::new(chain))
            .collect();
        let mut cap = Some(cap);
        move |output| {
            let Some(c) = &cap else { return };
            let Some(chain) = chains.last_mut() else {
                cap = None;
                return;
            };
            match chain.next_chunk(CHUNK) {
                Ok(Some(mut users)) => output.session(c).give_container(&mut users),
                Ok(None) => {
                    chains.pop();
                }
                // Checked at start; a part that went bad since loses its users' state
                // (they are looked up again), not the run.
                Err(e) => tracing::error!("checkpoint part not restored in full: {e}"),
            }
            activator.activate();
        }
    })
}
