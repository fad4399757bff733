//! The rule that decides which enriched events trigger actions: a rhai script with
//! `event`, `user` (the profile), `visit` and `history` in scope.
//!
//! The data is exposed through getters on handles that share the operator's state (no
//! per-event maps are built, and nothing can be assigned into it); `history` is turned
//! into a rhai array only when a script reads it. Fields answer to their JSON names and
//! to the Flink job's camelCase names (`event.event_type` and `event.eventType`).
//!
//! Fail-safe: only a `true` result passes. `false` rejects; a non-bool result or any
//! error (including running out of the operations budget) rejects and is counted.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use rhai::{AST, Dynamic, Engine, EvalAltResult, ImmutableString, Scope};

use crate::history::History;
use crate::model::{EnrichedView, Profile, RawJson, UserEvent, Visit};

pub mod check;
mod compiled;
mod fields;
pub mod health;
mod hints;
pub mod reload;
pub mod rules;
pub mod samples;
mod suggest;
mod trial;

use fields::{EVENT_FIELDS, Field, HISTORY_FIELDS, PARAM_FIELDS, PROFILE_FIELDS, VISIT_FIELDS};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// `relative`: where a relative `path` was looked for.
    #[error("filter.script-path: {path}: cannot read the filter script: {reason}{}", relative.as_ref().map(|dir| format!(" (a relative path is read from the working directory, {dir})")).unwrap_or_default())]
    Read {
        path: String,
        reason: String,
        relative: Option<String>,
    },
    #[error("{path}:{line}:{column}: {message}{}", hint.as_ref().map(Hint::to_string).unwrap_or_default())]
    Compile {
        path: String,
        line: usize,
        column: usize,
        message: String,
        /// What to write instead, when the mistake looks like an AviatorScript habit.
        hint: Option<Hint>,
    },
    /// Nothing to evaluate (empty, or only comments): it would reject every event.
    #[error(
        "{path}: the rule is empty (nothing but comments or blanks): give it an expression (a filter of nothing would reject every event){}",
        yaml_quote_hint(path)
    )]
    Empty { path: String },
    /// The script compiles but reads what does not exist (see `check`).
    #[error("{}", problems.render(path))]
    Check { path: String, problems: Problems },
    /// Several scripts failed: each error as it would be alone, one after another.
    #[error("{}", render_each(.0))]
    Several(Vec<FilterError>),
}

fn render_each(errors: &[FilterError]) -> String {
    let each: Vec<String> = errors.iter().map(ToString::to_string).collect();
    each.join("\n")
}

/// For a rule written in the config file (an action's `filter` or `cancel-if`): YAML
/// reads an unquoted `!event.is_https` as a tag on an empty value.
fn yaml_quote_hint(path: &str) -> &'static str {
    if path.starts_with("actions[") {
        " (in the config file, quote a rule: `filter: '!event.is_https'`; unquoted, YAML reads a leading `!` as a tag)"
    } else {
        ""
    }
}

/// A suggestion appended to an error message.
#[derive(Debug)]
pub struct Hint(pub &'static str);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, " (hint: {})", self.0)
    }
}

/// The problems `check` found in one script.
#[derive(Debug)]
pub struct Problems(pub Vec<check::Problem>);

impl Problems {
    /// One line per problem, as `path:line:column: message` (as a compiler's errors).
    fn render(&self, path: &str) -> String {
        let lines: Vec<String> = self.0.iter().map(|p| format!("{path}:{p}")).collect();
        lines.join("\n")
    }
}

/// The outcome for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Reject,
    /// Rejected because the script failed or did not return a bool.
    Error(String),
}

/// Why an evaluation gave no verdict.
#[derive(Debug, thiserror::Error)]
enum EvalError {
    /// rhai's error, with its position in the script.
    #[error("{0}")]
    Rhai(Box<EvalAltResult>),
    #[error("script returned {0}, not a bool")]
    NotBool(&'static str),
}

/// Limits that keep a buggy or hostile script from stalling a worker.
#[derive(Clone, Debug)]
pub struct FilterLimits {
    pub max_operations: u64,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_operations: 100_000,
        }
    }
}

/// A compiled filter. Holds an `Engine`, which is not `Send`: build one per worker.
pub struct Filter {
    engine: Engine,
    ast: AST,
    bound: Rc<RefCell<Option<Bound>>>,
    /// The script as a native tree, when it is in the subset `compiled` handles.
    native: Option<compiled::Node>,
}

/// What the script sees during one evaluation.
struct Bound {
    event: Arc<UserEvent>,
    user: Arc<Profile>,
    visit: Option<Arc<Visit>>,
    history: Arc<History>,
}

#[derive(Clone)]
struct EventRef(Arc<UserEvent>);
#[derive(Clone)]
struct UserRef(Arc<Profile>);
#[derive(Clone)]
struct VisitRef(Arc<Visit>);
/// An entry of a history, by its offset in it.
#[derive(Clone)]
struct HistoryRef(Arc<History>, usize);
#[derive(Clone)]
struct ParamsRef(RawJson);

/// A field as rhai sees it.
fn dynamic(f: Field<'_>) -> Dynamic {
    match f {
        Field::Unit => Dynamic::UNIT,
        Field::Bool(b) => b.into(),
        Field::Int(i) => i.into(),
        Field::Str(s) => Dynamic::from(ImmutableString::from(s)),
        Field::Params(p) => Dynamic::from(ParamsRef(p.to_raw())),
    }
}

fn param_field(p: &RawJson, name: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    // Parameters stay raw JSON in the state; reading one parses them (rare in filters).
    let value: serde_json::Value = serde_json::from_str(&p.text()).map_err(|e| e.to_string())?;
    match value.get(name) {
        None | Some(serde_json::Value::Null) => Ok(Dynamic::UNIT),
        Some(v) => rhai::serde::to_dynamic(v),
    }
}

/// Registers a getter under both names of each field, and an indexer by either name.
macro_rules! register_fields {
    ($engine:expr, $ty:ty, $fields:expr, |$x:ident, $name:ident| $get:expr) => {{
        for &(json, camel) in $fields {
            $engine.register_get(json, move |$x: &mut $ty| {
                let $name = json;
                $get
            });
            if camel != json {
                $engine.register_get(camel, move |$x: &mut $ty| {
                    let $name = json;
                    $get
                });
            }
        }
        // Also the fallback of `x.field` for names without a getter: an unknown field
        // is an error (and so a reject), not a silent `()`.
        $engine.register_indexer_get(
            |$x: &mut $ty, key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
                let Some($name) = $fields
                    .iter()
                    .find(|(j, c)| *j == key || *c == key)
                    .map(|(j, _)| *j)
                else {
                    return Err(format!("no field `{key}`").into());
                };
                Ok($get)
            },
        );
    }};
}

/// The engine a filter runs on: the sandbox's limits, the getters of the data, and the
/// resolver that gives `event`, `user`, `visit` and `history` from `bound`.
fn engine(limits: &FilterLimits, bound: Rc<RefCell<Option<Bound>>>) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(32)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(1 << 20)
        .set_max_array_size(100_000)
        .set_max_map_size(10_000)
        .set_max_variables(1_000)
        .disable_symbol("eval")
        .on_print(|s| tracing::debug!(target: "event_trigger::filter", "script print: {s}"))
        .on_debug(|s, _, pos| tracing::debug!(target: "event_trigger::filter", "script debug at {pos}: {s}"));
    engine.register_type_with_name::<EventRef>("Event");
    engine.register_type_with_name::<UserRef>("UserProfile");
    engine.register_type_with_name::<VisitRef>("Visit");
    engine.register_type_with_name::<HistoryRef>("HistoryEntry");
    engine.register_type_with_name::<ParamsRef>("Parameters");
    register_fields!(engine, EventRef, EVENT_FIELDS, |e, name| dynamic(
        fields::event(&e.0, name)
    ));
    register_fields!(engine, UserRef, PROFILE_FIELDS, |u, name| dynamic(
        fields::profile(&u.0, name)
    ));
    register_fields!(engine, VisitRef, VISIT_FIELDS, |v, name| dynamic(
        fields::visit(&v.0, name)
    ));
    register_fields!(engine, HistoryRef, HISTORY_FIELDS, |h, name| h
        .0
        .at(h.1)
        .map_or(Dynamic::UNIT, |e| dynamic(fields::history(&e, name))));
    for &(json, camel) in PARAM_FIELDS {
        engine.register_get(json, move |p: &mut ParamsRef| param_field(&p.0, json));
        if camel != json {
            engine.register_get(camel, move |p: &mut ParamsRef| param_field(&p.0, json));
        }
    }
    // `parameters["utm_source"]`, by either name, as the other types answer to indexing.
    engine.register_indexer_get(
        |p: &mut ParamsRef, key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            match PARAM_FIELDS.iter().find(|(j, c)| *j == key || *c == key) {
                Some((json, _)) => param_field(&p.0, json),
                None => Err(format!("no field `{key}` of `parameters`").into()),
            }
        },
    );
    #[allow(deprecated)] // `on_var` is marked volatile, not deprecated
    engine.on_var(move |name, _index, ctx| {
        if !matches!(name, "event" | "user" | "visit" | "history") || ctx.scope().contains(name) {
            return Ok(None);
        }
        let bound = bound.borrow();
        let Some(b) = bound.as_ref() else {
            return Ok(None);
        };
        Ok(Some(match name {
            "event" => Dynamic::from(EventRef(b.event.clone())),
            "user" => Dynamic::from(UserRef(b.user.clone())),
            "visit" => match &b.visit {
                Some(v) => Dynamic::from(VisitRef(v.clone())),
                None => Dynamic::UNIT,
            },
            _ => Dynamic::from_array(
                b.history
                    .entries()
                    .map(|(at, _)| Dynamic::from(HistoryRef(b.history.clone(), at)))
                    .collect(),
            ),
        }))
    });
    engine
}

impl Filter {
    /// Reads and compiles `path`; errors name the file, line and column.
    pub fn from_file(path: &Path, limits: &FilterLimits) -> Result<Filter, FilterError> {
        let script = Self::read(path)?;
        Self::compile(&script, &path.display().to_string(), limits)
    }

    /// The script at `path`, with an error naming the key, the file and, for a relative
    /// path, the directory it was looked for in.
    pub fn read(path: &Path) -> Result<String, FilterError> {
        let script = std::fs::read_to_string(path).map_err(|e| FilterError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
            relative: path
                .is_relative()
                .then(|| std::env::current_dir().map(|d| d.display().to_string()))
                .and_then(Result::ok),
        })?;
        // A byte order mark, as Windows editors write: not part of the rule.
        Ok(match script.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => script,
        })
    }

    /// Compiles `script`; `origin` names it in errors. A syntax error that looks like an
    /// AviatorScript habit (the original job's rule language) carries a hint.
    pub fn compile(
        script: &str,
        origin: &str,
        limits: &FilterLimits,
    ) -> Result<Filter, FilterError> {
        let bound: Rc<RefCell<Option<Bound>>> = Rc::new(RefCell::new(None));
        let engine = engine(limits, Rc::clone(&bound));
        let ast = engine.compile(script).map_err(|e| FilterError::Compile {
            path: origin.to_string(),
            line: e.1.line().unwrap_or(0),
            column: e.1.position().unwrap_or(0),
            hint: hints::for_parse_error(script, &e.0, e.1).map(Hint),
            message: e.0.to_string(),
        })?;
        if ast.statements().is_empty() {
            return Err(FilterError::Empty {
                path: origin.to_string(),
            });
        }
        let native = compiled::compile(&ast);
        tracing::debug!(native = native.is_some(), "filter {origin} compiled");
        Ok(Filter {
            engine,
            ast,
            bound,
            native,
        })
    }

    /// Compiles `script` and checks it before it runs on real events: a property,
    /// function or variable that does not exist is an error (`check`); an error the
    /// rule raises on the built-in sample states is returned as a warning (`trial`).
    pub fn compile_checked(
        script: &str,
        origin: &str,
        limits: &FilterLimits,
    ) -> Result<(Filter, Vec<String>), FilterError> {
        let mut filter = Self::compile(script, origin, limits)?;
        let problems = check::check(&mut filter.engine, &filter.ast, script);
        if !problems.is_empty() {
            return Err(FilterError::Check {
                path: origin.to_string(),
                problems: Problems(problems),
            });
        }
        let warnings = trial::run(&filter, origin);
        Ok((filter, warnings))
    }

    /// True when the script runs as a native tree (see `compiled`), not interpreted.
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// Judges one event against its user's state.
    pub fn judge(&self, view: EnrichedView<'_>) -> Verdict {
        if let Some(node) = &self.native
            && let Ok(pass) = node.eval(&view)
        {
            return if pass { Verdict::Pass } else { Verdict::Reject };
        }
        self.interpret(view)
    }

    /// Judges one event with the rhai interpreter (the reference for the native tree).
    pub fn interpret(&self, view: EnrichedView<'_>) -> Verdict {
        match self.evaluate(view) {
            Ok(true) => Verdict::Pass,
            Ok(false) => Verdict::Reject,
            Err(e) => Verdict::Error(e.to_string()),
        }
    }

    /// The interpreter's verdict, or why there is none.
    fn evaluate(&self, view: EnrichedView<'_>) -> Result<bool, EvalError> {
        *self.bound.borrow_mut() = Some(Bound {
            event: Arc::new(view.event.clone()),
            user: view.state.profile.clone(),
            visit: view.state.visit.clone(),
            history: view.state.history.clone(),
        });
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut Scope::new(), &self.ast);
        // Drop the handles now, so the state's Arcs are unshared again before the next
        // event updates them (no copy-on-write).
        *self.bound.borrow_mut() = None;
        result
            .map_err(EvalError::Rhai)?
            .as_bool()
            .map_err(EvalError::NotBool)
    }
}

/// States for the filter's tests: a user as a look-up leaves it.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::model::{HistoryEntry, Profile, ProfileData, UserState, Visit};

    /// The `i`-th entry of a history (its timestamp is `i`).
    pub fn history_entry(
        i: usize,
        event_id: Option<impl Into<crate::model::Text>>,
        event_type: Option<impl Into<crate::model::Text>>,
    ) -> HistoryEntry {
        HistoryEntry {
            event_id: event_id.map(Into::into),
            event_name: None,
            event_type: event_type.map(Into::into),
            timestamp: i as i64,
            parameters: None,
        }
    }

    /// A user just looked up (at time 0).
    pub fn user_state(
        profile: Profile,
        visit: Option<Visit>,
        history: Vec<HistoryEntry>,
    ) -> UserState {
        UserState::from_profile(
            ProfileData {
                profile,
                visit,
                history: history.into(),
            },
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserState;

    fn event(event_type: &str) -> UserEvent {
        UserEvent {
            event_id: Some("e1".into()),
            user_id: "u/1".into(),
            event_type: event_type.into(),
            duration: 42,
            timestamp: 1000,
            is_first_in_visit: true,
            parameters: Some(
                RawJson::parse(
                    r#"{"custom_params":{"page_title":"Sale","value":12.5},"utm_source":"google"}"#,
                )
                .unwrap(),
            ),
            ..Default::default()
        }
    }

    fn state(country: Option<&str>, history_types: &[&str]) -> UserState {
        let history = history_types
            .iter()
            .enumerate()
            .map(|(i, t)| fixtures::history_entry(i, Some(format!("h{i}")), Some(*t)))
            .collect();
        let profile = Profile {
            country: country.map(Into::into),
            ..Default::default()
        };
        let visit = Visit {
            actions: 7,
            landing_page: Some("/sale".into()),
            ..Default::default()
        };
        fixtures::user_state(profile, Some(visit), history)
    }

    fn judge(script: &str, ev: &UserEvent, st: &UserState) -> Verdict {
        let f = Filter::compile(script, "test.rhai", &FilterLimits::default()).unwrap();
        f.judge(EnrichedView {
            event: ev,
            state: st,
        })
    }

    #[test]
    fn seed_filter_with_json_and_camel_case_names() {
        let us = state(Some("US"), &[]);
        let de = state(Some("DE"), &[]);
        for script in [
            r#"event.event_type == "page_view" && user.country == "US""#,
            r#"event.eventType == "page_view" && user.country == "US""#,
        ] {
            assert_eq!(judge(script, &event("page_view"), &us), Verdict::Pass);
            assert_eq!(judge(script, &event("click"), &us), Verdict::Reject);
            assert_eq!(judge(script, &event("page_view"), &de), Verdict::Reject);
        }
    }

    #[test]
    fn empty_profile_fields_are_unit_and_compare_false() {
        let empty = UserState::empty(0);
        let s = r#"event.event_type == "page_view" && user.country == "US""#;
        assert_eq!(judge(s, &event("page_view"), &empty), Verdict::Reject);
        // A missing visit is `()`: reading a field of it is an error, hence a reject.
        assert!(matches!(
            judge("visit.actions > 0", &event("x"), &empty),
            Verdict::Error(_)
        ));
        assert_eq!(judge("visit == ()", &event("x"), &empty), Verdict::Pass);
    }

    #[test]
    fn history_len_iteration_and_filtering() {
        let st = state(
            Some("DE"),
            &["page_view", "click", "page_view", "page_view"],
        );
        let ev = event("click");
        assert_eq!(judge("history.len() == 4", &ev, &st), Verdict::Pass);
        assert_eq!(
            judge(
                r#"history.filter(|h| h.event_type == "page_view").len() >= 3"#,
                &ev,
                &st
            ),
            Verdict::Pass
        );
        assert_eq!(
            judge(
                r#"history.filter(|h| h.eventType == "click").len() == 2"#,
                &ev,
                &st
            ),
            Verdict::Reject
        );
        let loop_script = r#"
            let n = 0;
            for h in history { if h.event_type == "page_view" { n += 1; } }
            n == 3 && history[history.len() - 1].event_id == "h3"
        "#;
        assert_eq!(judge(loop_script, &ev, &st), Verdict::Pass);
    }

    #[test]
    fn all_event_visit_and_parameter_fields_are_readable() {
        let st = state(Some("US"), &[]);
        let ev = event("page_view");
        for script in [
            "event.duration == 42 && event.timestamp == 1000 && event.is_first_in_visit && event.isFirstInVisit",
            r#"event.user_id == "u/1" && event.userId == "u/1" && event.eventId == "e1""#,
            r#"visit.actions == 7 && visit.landingPage == "/sale" && visit.landing_page == "/sale""#,
            r#"event.parameters.utm_source == "google" && event.parameters.utmSource == "google""#,
            r#"event.parameters.custom_params.page_title == "Sale" && event.parameters.customParams.value > 12.0"#,
            r#"event["event_type"] == "page_view" && event["eventType"] == "page_view""#,
            r#"event.parameters["utm_source"] == "google" && event["parameters"]["utmSource"] == "google""#,
            r#"event.parameters["customParams"].page_title == "Sale" && event.parameters["utm_id"] == ()"#,
            "event.domain == ()",
        ] {
            assert_eq!(judge(script, &ev, &st), Verdict::Pass, "{script}");
        }
    }

    #[test]
    fn errors_and_non_bools_reject() {
        let st = state(Some("US"), &[]);
        let ev = event("page_view");
        assert!(matches!(
            judge("event.no_such_field == 1", &ev, &st),
            Verdict::Error(_)
        ));
        assert!(matches!(judge("42", &ev, &st), Verdict::Error(_)));
        assert!(matches!(
            judge(r#"throw "boom""#, &ev, &st),
            Verdict::Error(_)
        ));
        assert!(matches!(judge("1 / 0 == 1", &ev, &st), Verdict::Error(_)));
    }

    #[test]
    fn endless_loops_and_huge_strings_are_stopped() {
        let st = state(Some("US"), &[]);
        let ev = event("page_view");
        assert!(matches!(
            judge("loop { } true", &ev, &st),
            Verdict::Error(_)
        ));
        assert!(matches!(
            judge(r#"let s = "x"; loop { s += s; } true"#, &ev, &st),
            Verdict::Error(_)
        ));
        assert!(matches!(
            judge("fn f(x) { f(x) } f(1)", &ev, &st),
            Verdict::Error(_)
        ));
    }

    #[test]
    fn data_is_read_only_and_nothing_leaks_between_events() {
        let st = state(Some("US"), &["click"]);
        let ev = event("page_view");
        assert!(matches!(
            judge(r#"event.event_type = "x"; true"#, &ev, &st),
            Verdict::Error(_)
        ));
        let f = Filter::compile(
            "let seen = 1; history.push(1); history.len() == 1",
            "t",
            &FilterLimits::default(),
        )
        .unwrap();
        let view = EnrichedView {
            event: &ev,
            state: &st,
        };
        assert!(matches!(f.judge(view), Verdict::Error(e) if e.contains("constant")));
        assert!(matches!(f.judge(view), Verdict::Error(_)));
        assert_eq!(st.history.len(), 1);
        // After judging, the state's parts are unshared again.
        assert_eq!(Arc::strong_count(&st.history), 1);
    }

    #[test]
    fn eval_is_disabled() {
        let err = Filter::compile(r#"eval("true")"#, "f.rhai", &FilterLimits::default());
        assert!(err.is_err());
    }

    #[test]
    fn compile_errors_name_file_and_line() {
        let err = Filter::compile("true &&\n(", "rules/f.rhai", &FilterLimits::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("rules/f.rhai:2:"), "{err}");
    }

    /// A rule with nothing to evaluate would reject every event: refused at the start
    /// and on reload alike (a reload refused only a blank file; a comment-only one ran,
    /// and every event was a script error).
    #[test]
    fn a_rule_of_nothing_but_comments_or_blanks_is_refused() {
        for script in ["", " \n\t", "// disabled for now\n", "/* off */ ;"] {
            let err = Filter::compile(script, "r.rhai", &FilterLimits::default())
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.starts_with("r.rhai: the rule is empty")),
                "{script:?}: {err:?}"
            );
        }
        assert!(Filter::compile("// on\ntrue", "r.rhai", &FilterLimits::default()).is_ok());
    }

    /// A rule file that starts with a byte order mark (Windows editors write one) is read
    /// without it ("Unexpected '\u{feff}'" at 1:1 before).
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_rule() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "\u{feff}event.duration > 1").unwrap();
        let script = Filter::read(file.path()).unwrap();
        assert_eq!(script, "event.duration > 1");
        assert!(Filter::compile(&script, "r.rhai", &FilterLimits::default()).is_ok());
    }
}

#[cfg(test)]
mod readme_examples {
    use super::*;

    /// Every rhai example in the README compiles.
    #[test]
    fn readme_filter_examples_compile() {
        let readme = include_str!("../../README.md");
        let mut blocks = readme.split("```rhai\n").skip(1);
        let block = blocks.next().expect("a rhai block in the README");
        let block = &block[..block.find("```").unwrap()];
        let mut examples = Vec::new();
        for chunk in block.split("\n\n") {
            let lines: Vec<&str> = chunk
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            if lines.len() == 2 && !lines[0].starts_with("let") {
                examples.extend(lines.iter().map(|l| l.to_string()));
            } else if !lines.is_empty() {
                examples.push(lines.join("\n"));
            }
        }
        assert!(examples.len() >= 4);
        for ex in examples {
            Filter::compile(&ex, "README", &FilterLimits::default())
                .unwrap_or_else(|e| panic!("{ex}: {e}"));
        }
    }
}
