//! The users of a checkpoint, read back and handed to the user-state operator, which
//! routes them by the same hash as the events: a checkpoint written by any number of
//! workers restores onto any other number.

use std::sync::Arc;

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

use crate::checkpoint::{Restore, read_part};
use crate::model::{Text, Time, UserState};

/// Emits the users of `restore`'s parts, each part read by one worker (part `i` by
/// worker `i % peers`), one part per activation; then ends.
pub fn restore_source<'s>(
    scope: Scope<'s, Time>,
    restore: Option<Arc<Restore>>,
) -> Stream<'s, Time, Vec<(Text, UserState)>> {
    let (index, peers) = (scope.index(), scope.peers());
    source(scope, "Restore", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut parts: Vec<_> = restore
            .map(|r| r.part_paths())
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % peers == index)
            .map(|(_, p)| p)
            .collect();
        let mut cap = Some(cap);
        move |output| {
            let Some(c) = &cap else { return };
            match parts.pop() {
                Some(path) => {
                    match read_part(&path) {
                        Ok(mut users) => {
                            tracing::debug!(part = %path.display(), users = users.len(), "restoring");
                            output.session(c).give_container(&mut users);
                        }
                        // Checked at start; a part that went bad since loses its users'
                        // state (they are looked up again), not the run.
                        Err(e) => tracing::error!("checkpoint part not restored: {e}"),
                    }
                    activator.activate();
                }
                None => cap = None,
            }
        }
    })
}
