//! The job's rule and its actions' own filters, as configured. They are checked once per
//! process, so that a broken script fails the start with file and line, and compiled
//! once per worker (rhai's `Engine` is not `Send`, so each worker needs its own copy).

use super::reload::{FilterVersions, Filters};
use super::samples::Samples;
use super::{Filter, FilterError, FilterLimits};

/// How an action's own filter is named in errors and warnings.
pub fn action_origin(index: usize) -> String {
    format!("actions[{index}].filter")
}

/// How an action's `cancel-if` is named in errors and warnings.
pub fn cancel_origin(index: usize) -> String {
    format!("actions[{index}].cancel-if")
}

/// The rule's script and the actions' filters, by action in their order.
pub struct Rules<'a> {
    pub script: &'a str,
    /// Names the script in errors (its path).
    pub origin: &'a str,
    pub action_filters: Vec<Option<&'a str>>,
    /// Per action: what cancels its delayed firings (`cancel-if`).
    pub cancels: Vec<Option<&'a str>>,
    pub limits: &'a FilterLimits,
}

impl<'a> Rules<'a> {
    /// The rule and the filters and `cancel-if`s of the actions `specs` configure.
    pub fn of_specs(
        script: &'a str,
        origin: &'a str,
        specs: &'a [(String, crate::config::ActionSpec)],
        limits: &'a FilterLimits,
    ) -> Self {
        Rules {
            script,
            origin,
            action_filters: specs.iter().map(|(_, a)| a.filter.as_deref()).collect(),
            cancels: specs.iter().map(|(_, a)| a.cancel_if.as_deref()).collect(),
            limits,
        }
    }

    /// Compiles and checks the rule (`Filter::compile_checked`); returns the warnings on
    /// the sample states.
    fn check_rule(&self) -> Result<Vec<String>, FilterError> {
        Ok(Filter::compile_checked(self.script, self.origin, self.limits)?.1)
    }

    /// Checks the rule and every action's filter and `cancel-if`; returns their
    /// warnings, or the errors of every one that fails (a broken rule hides no broken
    /// action script).
    pub fn check(&self) -> Result<Vec<String>, FilterError> {
        match (self.check_rule(), self.check_action_filters()) {
            (Ok(mut warnings), Ok(more)) => {
                warnings.extend(more);
                Ok(warnings)
            }
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(rule), Err(FilterError::Several(mut all))) => {
                all.insert(0, rule);
                Err(FilterError::Several(all))
            }
            (Err(rule), Err(action)) => Err(FilterError::Several(vec![rule, action])),
        }
    }

    /// Compiles and checks each action's filter and `cancel-if`, in order; returns
    /// their warnings, or the errors of every one that fails (not only the first: a
    /// config with two broken scripts is fixed in one round).
    fn check_action_filters(&self) -> Result<Vec<String>, FilterError> {
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        for (i, f) in self.action_filters.iter().enumerate() {
            if let Some(f) = f {
                match Filter::compile_checked(f, &action_origin(i), self.limits) {
                    Ok((_, w)) => warnings.extend(w),
                    Err(e) => errors.push(e),
                }
            }
        }
        for (i, f) in self.cancels.iter().enumerate() {
            if let Some(f) = f {
                let checked = match Filter::compile_checked(f, &cancel_origin(i), self.limits) {
                    Ok((_, w)) => w,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                // A cancel condition that fails rejects nothing: it cancels nothing.
                warnings.extend(checked.into_iter().map(|w| {
                    w.replace(
                        "such events would be rejected as script errors",
                        "such events would cancel nothing, counted as script errors",
                    )
                }));
            }
        }
        match errors.len() {
            0 => Ok(warnings),
            1 => Err(errors.remove(0)),
            _ => Err(FilterError::Several(errors)),
        }
    }

    /// Each of `scripts` compiled, named by `origin` and its position.
    fn compile_each(
        &self,
        scripts: &[Option<&str>],
        origin: fn(usize) -> String,
    ) -> Result<Vec<Option<Filter>>, FilterError> {
        scripts
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.map(|f| Filter::compile(f, &origin(i), self.limits))
                    .transpose()
            })
            .collect()
    }

    /// One worker's filters: the rule (later versions from `versions`) and the actions'
    /// own filters (none when no action has one: every action takes every passed event).
    pub fn compile(
        &self,
        versions: FilterVersions,
        samples: Option<Samples>,
    ) -> Result<Filters, FilterError> {
        let rule = Filter::compile(self.script, self.origin, self.limits)?;
        let per_action = self.compile_each(&self.action_filters, action_origin)?;
        let per_action = if per_action.iter().any(Option::is_some) {
            per_action
        } else {
            Vec::new()
        };
        let cancels = self.compile_each(&self.cancels, cancel_origin)?;
        Ok(
            Filters::new(rule, versions, self.origin.to_string(), self.limits.clone())
                .with_actions(per_action)
                .with_cancels(cancels)
                .with_samples(samples),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FilterLimits = FilterLimits {
        max_operations: 10_000,
    };

    /// The rule `script` (`rule.rhai`) with the actions' `filters` and `cancels`.
    fn rules<'a>(
        script: &'a str,
        filters: Vec<Option<&'a str>>,
        cancels: Vec<Option<&'a str>>,
    ) -> Rules<'a> {
        Rules {
            script,
            origin: "rule.rhai",
            action_filters: filters,
            cancels,
            limits: &LIMITS,
        }
    }

    #[test]
    fn an_action_filter_is_named_by_its_position_in_errors() {
        let rules = rules(
            "true",
            vec![None, Some("event.no_such_field ==")],
            Vec::new(),
        );
        assert!(rules.check_rule().is_ok());
        let e = rules.check_action_filters().unwrap_err().to_string();
        assert!(e.starts_with("actions[1].filter:"), "{e}");
        assert!(rules.compile(FilterVersions::default(), None).is_err());
    }

    #[test]
    fn a_cancel_condition_is_checked_like_a_filter_and_named_by_its_action() {
        let rules = rules(
            "true",
            vec![None, None],
            vec![None, Some("event.event_tipe == \"purchase\"")],
        );
        let e = rules.check_action_filters().unwrap_err().to_string();
        assert!(e.starts_with("actions[1].cancel-if:"), "{e}");
        assert!(e.contains("event_type"), "names the fix: {e}");
    }

    #[test]
    fn every_broken_action_script_is_reported_not_only_the_first() {
        let rules = rules(
            "true",
            vec![Some("event.evnt_type == \"x\""), None, Some("true")],
            vec![None, Some("event.duration > \"5\""), None],
        );
        let e = rules.check_action_filters().unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert!(
            lines[0].starts_with("actions[0].filter:1:7: unknown property"),
            "{e}"
        );
        assert!(
            lines[1].starts_with("actions[1].cancel-if:1:16: `event.duration`"),
            "{e}"
        );
    }

    #[test]
    fn a_broken_rule_hides_no_broken_action_script() {
        let mut rules = rules(
            "user.contry == \"US\"",
            vec![Some("event.evnt_type == \"x\"")],
            vec![None],
        );
        let e = rules.check().unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert!(
            lines[0].starts_with("rule.rhai:1:6: unknown property"),
            "{e}"
        );
        assert!(lines[1].starts_with("actions[0].filter:1:7:"), "{e}");
        rules.cancels = vec![Some("event.duration > \"5\"")];
        assert_eq!(rules.check().unwrap_err().to_string().lines().count(), 3);
        rules.script = "true";
        rules.action_filters = vec![None];
        rules.cancels = vec![None];
        assert!(rules.check().unwrap().is_empty());
    }

    #[test]
    fn compiles_the_rule_and_the_action_filters_for_a_worker() {
        let rules = rules(
            "true",
            vec![None, Some("false")],
            vec![None, Some("event.event_type == \"purchase\"")],
        );
        assert!(rules.check_action_filters().unwrap().is_empty());
        assert!(rules.compile(FilterVersions::default(), None).is_ok());
    }
}
