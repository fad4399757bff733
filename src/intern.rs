//! Sharing of repeated strings (event types, names, platforms ...): one allocation per
//! distinct value instead of one per event.

use rustc_hash::FxHashSet;

use crate::model::Text;

/// A bounded set of shared strings: past `MAX` distinct values, new ones are no longer
/// kept, so a producer sending unique values cannot grow it without limit.
#[derive(Default)]
pub struct Interner(FxHashSet<Text>);

impl Interner {
    pub const MAX: usize = 4096;

    /// The shared copy of `s`, making one if there is room.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use event_trigger::intern::Interner;
    /// let mut i = Interner::default();
    /// let a = i.intern("page_view");
    /// let b = i.intern("page_view");
    /// assert!(Arc::ptr_eq(&a, &b));
    /// ```
    pub fn intern(&mut self, s: &str) -> Text {
        if let Some(shared) = self.0.get(s) {
            return shared.clone();
        }
        let t: Text = s.into();
        if self.0.len() < Self::MAX {
            self.0.insert(t.clone());
        }
        t
    }
}
