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

/// The rule's script and the actions' filters, by action in their order.
pub struct Rules<'a> {
    pub script: &'a str,
    /// Names the script in errors (its path).
    pub origin: &'a str,
    pub action_filters: Vec<Option<&'a str>>,
    pub limits: &'a FilterLimits,
}

impl Rules<'_> {
    /// Compiles and checks the rule (`Filter::compile_checked`); returns the warnings on
    /// the sample states.
    pub fn check_rule(&self) -> Result<Vec<String>, FilterError> {
        Ok(Filter::compile_checked(self.script, self.origin, self.limits)?.1)
    }

    /// Compiles and checks each action's filter, in order; returns their warnings.
    pub fn check_action_filters(&self) -> Result<Vec<String>, FilterError> {
        let mut warnings = Vec::new();
        for (i, f) in self.action_filters.iter().enumerate() {
            if let Some(f) = f {
                warnings.extend(Filter::compile_checked(f, &action_origin(i), self.limits)?.1);
            }
        }
        Ok(warnings)
    }

    /// One worker's filters: the rule (later versions from `versions`) and the actions'
    /// own filters (none when no action has one: every action takes every passed event).
    pub fn compile(
        &self,
        versions: FilterVersions,
        samples: Option<Samples>,
    ) -> Result<Filters, FilterError> {
        let rule = Filter::compile(self.script, self.origin, self.limits)?;
        let per_action = self
            .action_filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.map(|f| Filter::compile(f, &action_origin(i), self.limits))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let per_action = if per_action.iter().any(Option::is_some) {
            per_action
        } else {
            Vec::new()
        };
        Ok(
            Filters::new(rule, versions, self.origin.to_string(), self.limits.clone())
                .with_actions(per_action)
                .with_samples(samples),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FilterLimits {
        FilterLimits {
            max_operations: 10_000,
        }
    }

    #[test]
    fn an_action_filter_is_named_by_its_position_in_errors() {
        let limits = limits();
        let rules = Rules {
            script: "true",
            origin: "rule.rhai",
            action_filters: vec![None, Some("event.no_such_field ==")],
            limits: &limits,
        };
        assert!(rules.check_rule().is_ok());
        let e = rules.check_action_filters().unwrap_err().to_string();
        assert!(e.starts_with("actions[1].filter:"), "{e}");
        assert!(rules.compile(FilterVersions::default(), None).is_err());
    }

    #[test]
    fn compiles_the_rule_and_the_action_filters_for_a_worker() {
        let limits = limits();
        let rules = Rules {
            script: "true",
            origin: "rule.rhai",
            action_filters: vec![None, Some("false")],
            limits: &limits,
        };
        assert!(rules.check_action_filters().unwrap().is_empty());
        assert!(rules.compile(FilterVersions::default(), None).is_ok());
    }
}
