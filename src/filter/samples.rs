//! The first few script errors and passing events of a run, kept for the rule tester
//! (`validate --events`), which prints them after its counts.

use std::sync::{Arc, Mutex};

use crate::model::EnrichedView;

#[derive(Debug, Default)]
struct Kept {
    errors: Vec<String>,
    passed: Vec<String>,
}

/// Shared by the workers of the process; each list keeps its first `keep` entries.
#[derive(Clone, Debug)]
pub struct Samples {
    keep: usize,
    kept: Arc<Mutex<Kept>>,
}

impl Samples {
    pub fn new(keep: usize) -> Samples {
        Samples {
            keep,
            kept: Arc::default(),
        }
    }

    /// `origin` (the script or an action's filter) failed on `view`'s event.
    pub fn error(&self, origin: &str, view: EnrichedView<'_>, error: &str) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.errors.len() < self.keep {
            let id = view.event.event_id.as_deref().unwrap_or("(no event_id)");
            let user = &view.event.user_id;
            kept.errors
                .push(format!("event {id} of user {user}: {origin}: {error}"));
        }
    }

    /// `view`'s event passed the filter.
    pub fn passed(&self, view: EnrichedView<'_>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.passed.len() < self.keep {
            let json = serde_json::to_string(view.event)
                .unwrap_or_else(|e| format!("(cannot show the event: {e})"));
            kept.passed.push(json);
        }
    }

    /// The errors and the passing events kept, in the order they came.
    pub fn taken(&self) -> (Vec<String>, Vec<String>) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        (kept.errors.clone(), kept.passed.clone())
    }
}
