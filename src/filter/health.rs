//! Whether the rule works on the events it judges. A rule that fails on most events
//! (a field the checks could not see, data of another shape than expected) rejects
//! them all as script errors; the progress lines and the summary must say so loudly,
//! with an example, rather than only count them.

use std::sync::OnceLock;

/// Above this share of judged events failing, the rule is flagged.
pub const ALARM_SHARE: f64 = 0.01;

static FIRST_ERROR: OnceLock<String> = OnceLock::new();

/// Keeps `error` (built only when needed) if no script error was kept in this process.
pub fn record(error: impl FnOnce() -> String) {
    if FIRST_ERROR.get().is_none() {
        let _ = FIRST_ERROR.set(error());
    }
}

/// The first script error of this process, if there was one.
pub fn first_error() -> Option<&'static str> {
    FIRST_ERROR.get().map(String::as_str)
}

/// The filter's verdicts, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Judged {
    pub passed: u64,
    pub rejected: u64,
    pub script_errors: u64,
}

impl Judged {
    fn total(&self) -> u64 {
        self.passed + self.rejected + self.script_errors
    }

    /// The warning to give when more than `ALARM_SHARE` of the judged events were
    /// script errors, with the first error (from this process).
    pub fn alarm(&self) -> Option<String> {
        let total = self.total();
        if total == 0 || (self.script_errors as f64) <= ALARM_SHARE * total as f64 {
            return None;
        }
        let share = 100.0 * self.script_errors as f64 / total as f64;
        let first = first_error().unwrap_or("(in another process's log)");
        Some(format!(
            "the filter failed on {share:.1}% of the events it judged ({} script errors of {total}): check the rule; first error: {first}",
            self.script_errors
        ))
    }

    /// Every event judged was a script error (and there was at least one).
    pub fn all_failed(&self) -> bool {
        self.script_errors > 0 && self.passed + self.rejected == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(passed: u64, rejected: u64, script_errors: u64) -> Judged {
        Judged {
            passed,
            rejected,
            script_errors,
        }
    }

    #[test]
    fn more_than_one_percent_of_errors_is_flagged() {
        assert_eq!(judged(0, 0, 0).alarm(), None);
        assert_eq!(judged(50, 49, 1).alarm(), None, "exactly 1%");
        let alarm = judged(50, 48, 2).alarm().unwrap();
        assert!(
            alarm.contains("2.0%") && alarm.contains("2 script errors of 100"),
            "{alarm}"
        );
        assert!(judged(0, 0, 3).all_failed());
        assert!(!judged(0, 1, 3).all_failed());
        assert!(!judged(0, 0, 0).all_failed());
    }
}
