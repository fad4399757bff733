//! A native evaluator for the filter scripts most rules are: one expression over the
//! fields of `event`, `user` and `visit`, with literals, comparisons, `&&`, `||`, `!`,
//! `history.len()` and `history.filter(|h| ...).len()`.
//!
//! The script is still parsed (and checked) by rhai; the parsed AST is translated into
//! a small tree of nodes that reads the state in place, with no `Dynamic`, no scope and
//! no allocation per event. Anything outside the subset is not translated, and the
//! interpreter runs the script as before. At run time, any case whose exact rhai
//! behaviour the tree does not model (a non-bool where rhai wants a bool, ordering
//! between different types, a field of a missing visit ...) makes the evaluation stop
//! and hand the event to the interpreter: the verdicts are rhai's in every case, and the
//! property test in this module checks that on random scripts and states.

use rhai::{AST, ASTNode, Expr, FnCallExpr, FnPtr, Position, Stmt};

use super::fields::{self, Field};
use crate::history::Entry;
use crate::model::EnrichedView;

/// The tree cannot decide this event as rhai would: ask the interpreter.
#[derive(Debug)]
pub struct Undecided;

type Val<'x> = Field<'x>;
type Res<'x> = Result<Val<'x>, Undecided>;

#[derive(Clone, Copy, Debug)]
pub enum Root {
    Event,
    User,
    Visit,
    /// The history entry a `history.filter` closure is looking at.
    Entry,
}

#[derive(Clone, Copy, Debug)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A field's getter, by the root it reads.
#[derive(Clone, Copy, Debug)]
pub enum Get {
    Event(fields::EventGetter),
    User(fields::ProfileGetter),
    Visit(fields::VisitGetter),
    Entry(fields::EntryGetter),
}

#[derive(Debug)]
pub enum Node {
    Lit(LitVal),
    Field(Get),
    HistoryLen,
    /// `history.filter(|h| pred).len()`.
    HistoryCount(Box<Node>),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Compare(Cmp, Box<Node>, Box<Node>),
    /// `field == "text"` (`equal`) or `field != "text"`, either way round: the usual
    /// comparison of a rule, read without the general one's steps.
    FieldIs {
        get: Get,
        text: Box<str>,
        equal: bool,
    },
}

#[derive(Debug)]
pub enum LitVal {
    Unit,
    Bool(bool),
    Int(i64),
    Str(Box<str>),
}

/// Translates `ast` if the whole script is in the subset.
pub fn compile(ast: &AST) -> Option<Node> {
    let [stmt] = ast.statements() else {
        return None;
    };
    Compiler {
        ast,
        entry_var: None,
    }
    .stmt(stmt)
}

struct Compiler<'a> {
    ast: &'a AST,
    /// Inside a `history.filter` closure: the name of its parameter.
    entry_var: Option<String>,
}

impl Compiler<'_> {
    fn stmt(&self, s: &Stmt) -> Option<Node> {
        match s {
            Stmt::Expr(e) => self.expr(e),
            Stmt::FnCall(f, _) => self.call(f),
            _ => None,
        }
    }

    fn expr(&self, e: &Expr) -> Option<Node> {
        Some(match e {
            Expr::BoolConstant(b, _) => Node::Lit(LitVal::Bool(*b)),
            Expr::IntegerConstant(i, _) => Node::Lit(LitVal::Int(*i)),
            Expr::StringConstant(s, _) => Node::Lit(LitVal::Str(s.as_str().into())),
            Expr::Unit(_) => Node::Lit(LitVal::Unit),
            Expr::And(ops, _) => {
                Node::And(ops.iter().map(|o| self.expr(o)).collect::<Option<_>>()?)
            }
            Expr::Or(ops, _) => Node::Or(ops.iter().map(|o| self.expr(o)).collect::<Option<_>>()?),
            Expr::FnCall(f, _) => self.call(f)?,
            Expr::Dot(b, _, _) => self.dot(&b.lhs, &b.rhs)?,
            _ => return None,
        })
    }

    fn call(&self, f: &FnCallExpr) -> Option<Node> {
        if f.op_token.is_none() || f.is_qualified() {
            return None;
        }
        let cmp = match (f.name.as_str(), f.args.as_slice()) {
            ("!", [x]) => return Some(Node::Not(Box::new(self.expr(x)?))),
            ("==", [_, _]) => Cmp::Eq,
            ("!=", [_, _]) => Cmp::Ne,
            ("<", [_, _]) => Cmp::Lt,
            ("<=", [_, _]) => Cmp::Le,
            (">", [_, _]) => Cmp::Gt,
            (">=", [_, _]) => Cmp::Ge,
            _ => return None,
        };
        let (a, b) = (self.expr(&f.args[0])?, self.expr(&f.args[1])?);
        Some(match (cmp, a, b) {
            (Cmp::Eq | Cmp::Ne, Node::Field(get), Node::Lit(LitVal::Str(text)))
            | (Cmp::Eq | Cmp::Ne, Node::Lit(LitVal::Str(text)), Node::Field(get)) => {
                Node::FieldIs {
                    get,
                    text,
                    equal: matches!(cmp, Cmp::Eq),
                }
            }
            (cmp, a, b) => Node::Compare(cmp, Box::new(a), Box::new(b)),
        })
    }

    fn variable(e: &Expr) -> Option<&str> {
        match e {
            Expr::Variable(v, _, _) if v.2.is_empty() => Some(v.1.as_str()),
            _ => None,
        }
    }

    fn dot(&self, lhs: &Expr, rhs: &Expr) -> Option<Node> {
        let var = Self::variable(lhs)?;
        let root = match var {
            v if Some(v) == self.entry_var.as_deref() => Root::Entry,
            "history" if self.entry_var.is_none() => return self.history(rhs),
            "event" => Root::Event,
            "user" => Root::User,
            "visit" => Root::Visit,
            _ => return None,
        };
        let Expr::Property(p, _) = rhs else {
            return None;
        };
        let field = canonical(root, p.2.as_str())?;
        let get = match root {
            Root::Event => Get::Event(fields::event_getter(field)?),
            Root::User => Get::User(fields::profile_getter(field)?),
            Root::Visit => Get::Visit(fields::visit_getter(field)?),
            Root::Entry => Get::Entry(fields::entry_getter(field)?),
        };
        Some(Node::Field(get))
    }

    /// `history.len()` or `history.filter(|h| ...).len()`.
    fn history(&self, rhs: &Expr) -> Option<Node> {
        match rhs {
            Expr::MethodCall(m, _) if m.name == "len" && m.args.is_empty() => {
                Some(Node::HistoryLen)
            }
            Expr::Dot(b, _, _) => {
                let (Expr::MethodCall(filter, _), Expr::MethodCall(len, _)) = (&b.lhs, &b.rhs)
                else {
                    return None;
                };
                if filter.name != "filter" || len.name != "len" || !len.args.is_empty() {
                    return None;
                }
                let [Expr::DynamicConstant(f, _)] = filter.args.as_slice() else {
                    return None;
                };
                let name = f.read_lock::<FnPtr>()?.fn_name().to_string();
                Some(Node::HistoryCount(Box::new(self.closure(&name)?)))
            }
            _ => None,
        }
    }

    /// The body of the one-parameter script function `name` (a closure), as a tree over
    /// one history entry. rhai does not export the type of a function's body, so its
    /// statement is found by walking the AST (which visits function bodies after the
    /// script's own statements) and matching the function's source range.
    fn closure(&self, name: &str) -> Option<Node> {
        let def = self
            .ast
            .iter_fn_def()
            .find(|d| d.name == name && d.params.len() == 1)?;
        let param = def.params[0].to_string();
        if ["event", "user", "visit", "history"].contains(&param.as_str()) {
            return None;
        }
        let key = |p: Position| (p.line().unwrap_or(0), p.position().unwrap_or(0));
        let start = key(def.body.start_position());
        // A closure whose body is one expression has no end position: its statement
        // sits exactly at the start.
        let end = match def.body.end_position() {
            p if p.is_none() => start,
            p => key(p),
        };
        let inner = Compiler {
            ast: self.ast,
            entry_var: Some(param),
        };
        let script_statements = self.ast.statements().len();
        let (mut seen, mut bodies) = (0, Vec::new());
        self.ast.walk(&mut |path: &[ASTNode]| {
            if let [ASTNode::Stmt(stmt)] = path {
                seen += 1;
                let at = key(stmt.position());
                if seen > script_statements && start <= at && at <= end {
                    bodies.push(inner.stmt(stmt));
                }
            }
            true
        });
        match bodies.as_mut_slice() {
            [one] => one.take(),
            _ => None,
        }
    }
}

/// The JSON name of a field of `root` called `name` (JSON or camelCase), if it is one
/// of the scalar fields the tree reads.
fn canonical(root: Root, name: &str) -> Option<&'static str> {
    let table: &[(&'static str, &'static str)] = match root {
        Root::Event => fields::EVENT_FIELDS,
        Root::User => fields::PROFILE_FIELDS,
        Root::Visit => fields::VISIT_FIELDS,
        Root::Entry => fields::HISTORY_FIELDS,
    };
    let (json, _) = table.iter().find(|(j, c)| *j == name || *c == name)?;
    // Parameters are maps parsed on demand: left to the interpreter.
    (*json != "parameters").then_some(*json)
}

fn boolean(v: Val<'_>) -> Result<bool, Undecided> {
    match v {
        Val::Bool(b) => Ok(b),
        _ => Err(Undecided),
    }
}

impl Get {
    fn read<'x>(self, view: &EnrichedView<'x>, entry: Option<&Entry<'x>>) -> Res<'x> {
        Ok(match self {
            Get::Event(get) => get(view.event),
            Get::User(get) => get(&view.state.profile),
            // A field of a missing visit is an error in rhai.
            Get::Visit(get) => get(view.state.visit.as_deref().ok_or(Undecided)?),
            Get::Entry(get) => get(entry.ok_or(Undecided)?),
        })
    }
}

impl Node {
    /// The script's result for `view`, or `Undecided`.
    pub fn eval(&self, view: &EnrichedView<'_>) -> Result<bool, Undecided> {
        boolean(self.value(view, None)?)
    }

    fn value<'x>(&'x self, view: &EnrichedView<'x>, entry: Option<&Entry<'x>>) -> Res<'x> {
        match self {
            Node::Lit(l) => Ok(match l {
                LitVal::Unit => Val::Unit,
                LitVal::Bool(b) => Val::Bool(*b),
                LitVal::Int(i) => Val::Int(*i),
                LitVal::Str(s) => Val::Str(s),
            }),
            Node::Field(get) => get.read(view, entry),
            Node::HistoryLen => Ok(Val::Int(view.state.history.len() as i64)),
            Node::HistoryCount(pred) => {
                let mut n = 0;
                for h in view.state.history.iter() {
                    if boolean(pred.value(view, Some(&h))?)? {
                        n += 1;
                    }
                }
                Ok(Val::Int(n))
            }
            Node::Not(x) => Ok(Val::Bool(!boolean(x.value(view, entry)?)?)),
            Node::And(xs) => {
                for x in xs {
                    if !boolean(x.value(view, entry)?)? {
                        return Ok(Val::Bool(false));
                    }
                }
                Ok(Val::Bool(true))
            }
            Node::Or(xs) => {
                for x in xs {
                    if boolean(x.value(view, entry)?)? {
                        return Ok(Val::Bool(true));
                    }
                }
                Ok(Val::Bool(false))
            }
            Node::Compare(op, a, b) => compare(*op, a.value(view, entry)?, b.value(view, entry)?),
            Node::FieldIs { get, text, equal } => Ok(Val::Bool(match get.read(view, entry)? {
                Val::Str(s) => (s == &**text) == *equal,
                // As `compare` has it: parameters are the interpreter's; any other
                // type differs from a string (`==` false, `!=` true).
                Val::Params(_) => return Err(Undecided),
                _ => !*equal,
            })),
        }
    }
}

fn compare<'x>(op: Cmp, a: Val<'x>, b: Val<'x>) -> Res<'x> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(&y)),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) if matches!(op, Cmp::Eq | Cmp::Ne) => Some(x.cmp(&y)),
        (Val::Unit, Val::Unit) if matches!(op, Cmp::Eq | Cmp::Ne) => Some(Ordering::Equal),
        // Parameters are never read by the tree; anything else here is a type mismatch.
        (Val::Params(_), _) | (_, Val::Params(_)) => return Err(Undecided),
        _ => None,
    };
    Ok(Val::Bool(match (op, ord) {
        (Cmp::Eq, Some(o)) => o == Ordering::Equal,
        (Cmp::Ne, Some(o)) => o != Ordering::Equal,
        (Cmp::Lt, Some(o)) => o == Ordering::Less,
        (Cmp::Le, Some(o)) => o != Ordering::Greater,
        (Cmp::Gt, Some(o)) => o == Ordering::Greater,
        (Cmp::Ge, Some(o)) => o != Ordering::Less,
        // Values of different types: rhai's `==` is false and `!=` true.
        (Cmp::Eq, None) => false,
        (Cmp::Ne, None) => true,
        _ => return Err(Undecided),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::fields::{EVENT_FIELDS, HISTORY_FIELDS, PROFILE_FIELDS, VISIT_FIELDS};
    use super::super::fixtures::{history_entry, user_state};
    use super::super::{Filter, FilterLimits, Verdict};
    use super::{Node, Undecided};
    use crate::model::{EnrichedView, Profile, UserEvent, UserState, Visit};

    /// A small deterministic generator (no dependency needed for this).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.next(xs.len())]
        }
    }

    const STRS: &[&str] = &["US", "DE", "", "page_view", "click", "a"];

    fn operand(r: &mut Rng) -> String {
        match r.next(6) {
            0 => format!("{:?}", r.pick(STRS)),
            1 => format!("{}", r.next(5) as i64 - 1),
            2 => ["true", "false", "()"][r.next(3)].to_string(),
            3 if r.next(2) == 0 => "history.len()".to_string(),
            3 => {
                let (json, camel) = *r.pick(HISTORY_FIELDS);
                let field = if json == "parameters" {
                    "timestamp"
                } else if r.next(2) == 0 {
                    json
                } else {
                    camel
                };
                let op = r.pick(&["==", "!=", "<", ">="]);
                let lit = if r.next(2) == 0 {
                    format!("{:?}", r.pick(STRS))
                } else {
                    format!("{}", r.next(3))
                };
                format!("history.filter(|h| h.{field} {op} {lit}).len()")
            }
            _ => {
                let (root, table) = *r.pick(&[
                    ("event", EVENT_FIELDS),
                    ("user", PROFILE_FIELDS),
                    ("visit", VISIT_FIELDS),
                ]);
                let (json, camel) = *r.pick(table);
                if json == "parameters" {
                    return "event.duration".into();
                }
                format!("{root}.{}", if r.next(2) == 0 { json } else { camel })
            }
        }
    }

    fn expr(r: &mut Rng, depth: usize) -> String {
        match if depth == 0 { 0 } else { r.next(5) } {
            0 | 1 => {
                let op = r.pick(&["==", "!=", "<", "<=", ">", ">="]);
                format!("{} {op} {}", operand(r), operand(r))
            }
            2 => format!("!({})", expr(r, depth - 1)),
            3 => format!("({}) && ({})", expr(r, depth - 1), expr(r, depth - 1)),
            _ => format!("({}) || ({})", expr(r, depth - 1), expr(r, depth - 1)),
        }
    }

    fn opt_str(r: &mut Rng) -> Option<String> {
        (r.next(4) != 0).then(|| r.pick(STRS).to_string())
    }

    fn event(r: &mut Rng) -> UserEvent {
        UserEvent {
            event_id: opt_str(r).map(Into::into),
            user_id: r.pick(STRS).to_string().into(),
            domain: opt_str(r).map(Into::into),
            event_name: opt_str(r).map(Into::into),
            platform: opt_str(r).map(Into::into),
            event_type: r.pick(STRS).to_string().into(),
            is_first_in_visit: r.next(2) == 0,
            is_https: r.next(2) == 0,
            duration: r.next(4) as i64 - 1,
            timestamp: r.next(3) as i64,
            ..Default::default()
        }
    }

    fn state(r: &mut Rng) -> UserState {
        let visit = (r.next(3) != 0).then(|| Visit {
            actions: r.next(4) as i64,
            os: opt_str(r).map(Into::into),
            landing_page: opt_str(r).map(Into::into),
            is_first_visit: r.next(2) == 0,
            ..Default::default()
        });
        let history = (0..r.next(4))
            .map(|i| {
                let id = opt_str(r);
                history_entry(i, id, opt_str(r))
            })
            .collect();
        let profile = Profile {
            country: opt_str(r).map(Into::into),
            city: opt_str(r).map(Into::into),
            ..Default::default()
        };
        user_state(profile, visit, history)
    }

    fn same(a: &Verdict, b: &Verdict) -> bool {
        matches!(
            (a, b),
            (Verdict::Pass, Verdict::Pass)
                | (Verdict::Reject, Verdict::Reject)
                | (Verdict::Error(_), Verdict::Error(_))
        )
    }

    /// The native tree and the interpreter agree on random scripts of the subset over
    /// random events and states, and the tree decides most of them itself.
    #[test]
    fn native_tree_agrees_with_the_interpreter() {
        let mut r = Rng(7);
        let (mut decided, mut total) = (0, 0);
        for _ in 0..400 {
            let script = expr(&mut r, 3);
            let f = Filter::compile(&script, "generated", &FilterLimits::default()).unwrap();
            let node = f
                .native
                .as_ref()
                .unwrap_or_else(|| panic!("not translated: {script}"));
            for _ in 0..25 {
                let (ev, st) = (event(&mut r), state(&mut r));
                let view = EnrichedView {
                    event: &ev,
                    state: &st,
                };
                let reference = f.interpret(view);
                total += 1;
                if let Ok(pass) = node.eval(&view) {
                    decided += 1;
                    let native = if pass { Verdict::Pass } else { Verdict::Reject };
                    assert!(
                        same(&native, &reference),
                        "{script}\n{ev:?}\n{st:?}\nnative {native:?}, rhai {reference:?}"
                    );
                }
                assert!(same(&f.judge(view), &reference));
            }
        }
        // Random scripts often compare values of different types with `<`, or read a
        // missing visit: those go to the interpreter. Enough must remain to check.
        assert!(
            decided * 3 > total,
            "the tree decided only {decided} of {total}"
        );
    }

    #[test]
    fn typical_rules_are_always_decided_natively() {
        let mut r = Rng(11);
        for script in [
            r#"event.eventType == "page_view" && user.country == "US""#,
            r#"event.event_type != "click" || (user.country == "DE" && history.len() >= 2)"#,
            r#"!(event.is_https) && event.duration > 0 && user.city != ()"#,
            r#"user.country == "DE" && history.filter(|h| h.eventType == "click").len() >= 1"#,
        ] {
            let f = Filter::compile(script, "t", &FilterLimits::default()).unwrap();
            let node = f.native.as_ref().unwrap();
            for _ in 0..200 {
                let (ev, st) = (event(&mut r), state(&mut r));
                let view = EnrichedView {
                    event: &ev,
                    state: &st,
                };
                let pass = node
                    .eval(&view)
                    .unwrap_or_else(|_| panic!("undecided: {script} on {ev:?} {st:?}"));
                assert!(same(
                    &if pass { Verdict::Pass } else { Verdict::Reject },
                    &f.interpret(view)
                ));
            }
        }
    }

    /// `eventDisplayName` (as users write it) and `eventDisplayname` (the original's
    /// spelling) read the same field, natively and interpreted.
    #[test]
    fn both_spellings_of_event_displayname_are_read_natively() {
        let ev = UserEvent {
            event_displayname: Some("Home page".into()),
            ..Default::default()
        };
        let st = UserState::empty(0);
        let view = EnrichedView {
            event: &ev,
            state: &st,
        };
        for name in ["eventDisplayName", "eventDisplayname", "event_displayname"] {
            let script = format!(r#"event.{name} == "Home page""#);
            let f = Filter::compile(&script, "t", &FilterLimits::default()).unwrap();
            assert!(f.is_native(), "{script}");
            assert_eq!(
                f.native.as_ref().unwrap().eval(&view).ok(),
                Some(true),
                "{script}"
            );
            assert_eq!(f.interpret(view), Verdict::Pass, "{script}");
        }
    }

    /// A field compared with a string by `==` or `!=`, either way round, is read the short
    /// way (`Node::FieldIs`), with rhai's verdicts: a string equal or not, a missing
    /// string, a number or a boolean (different types: `==` false, `!=` true), a field
    /// of a missing visit and an entry's field (the interpreter's).
    #[test]
    fn a_field_compared_with_a_string_is_read_the_short_way_as_rhai_reads_it() {
        let ev = UserEvent {
            event_type: "click".into(),
            duration: 5,
            ..Default::default()
        };
        let with_visit = user_state(Profile::default(), Some(Visit::default()), Vec::new());
        let with_history = user_state(
            Profile::default(),
            None,
            vec![history_entry(0, Some("e0"), Some("click"))],
        );
        let fields = [
            "event.eventType",
            "event.event_id",
            "event.duration",
            "event.is_https",
            "user.country",
            "visit.os",
        ];
        for st in [UserState::empty(0), with_visit, with_history] {
            let view = EnrichedView {
                event: &ev,
                state: &st,
            };
            for field in fields {
                for text in ["click", "", "5", "false"] {
                    for op in ["==", "!="] {
                        let lit = format!("{text:?}");
                        for script in [
                            format!("{field} {op} {lit}"),
                            format!("{lit} {op} {field}"),
                            format!("history.filter(|h| h.event_type {op} {lit}).len() == 1"),
                        ] {
                            let f = Filter::compile(&script, "t", &FilterLimits::default());
                            let f = f.unwrap();
                            let node = f.native.as_ref().expect("translated");
                            let is_short = |n: &Node| matches!(n, Node::FieldIs { .. });
                            let short = match node {
                                Node::Compare(_, a, _) => match &**a {
                                    Node::HistoryCount(p) => is_short(p),
                                    _ => false,
                                },
                                n => is_short(n),
                            };
                            assert!(short, "{script}: {node:?}");
                            let reference = f.interpret(view);
                            match node.eval(&view) {
                                Ok(pass) => assert!(
                                    same(
                                        &if pass { Verdict::Pass } else { Verdict::Reject },
                                        &reference
                                    ),
                                    "{script} on {st:?}: rhai {reference:?}"
                                ),
                                Err(Undecided) => {
                                    assert!(script.contains("visit."), "{script} undecided")
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn scripts_outside_the_subset_are_interpreted() {
        for script in [
            "let x = 1; x == 1",
            r#"history.filter(|h| h.event_type == event.event_type).len() > 0"#,
            r#"history.filter(|h| h.parameters.utm_source == "g").len() > 0"#,
            "history.filter(|event| event.timestamp > 1).len() > 0",
            r#"event.parameters.utm_source == "g""#,
            r#"event["event_type"] == "x""#,
            "event.duration + 1 > 2",
            "event.duration > 1.5",
        ] {
            let f = Filter::compile(script, "t", &FilterLimits::default()).unwrap();
            assert!(!f.is_native(), "{script}");
        }
        let seed = Filter::compile(
            r#"event.eventType == "page_view" && user.country == "US""#,
            "t",
            &FilterLimits::default(),
        )
        .unwrap();
        assert!(seed.is_native());
    }

    /// A string as a rhai literal.
    fn literal(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// Passes natively (where the tree decides it) and interpreted; true if the tree
    /// decided it.
    fn passes_both_ways(script: &str, st: &UserState) -> bool {
        let f = Filter::compile(script, "generated", &FilterLimits::default()).unwrap();
        let ev = UserEvent::default();
        let view = EnrichedView {
            event: &ev,
            state: st,
        };
        assert_eq!(f.interpret(view), Verdict::Pass, "interpreted: {script}");
        let native = f.native.as_ref().and_then(|node| node.eval(&view).ok());
        assert_ne!(native, Some(false), "native: {script}");
        native.is_some()
    }

    /// Through the compact history, both evaluators read exactly what the wire model
    /// holds: random histories (the history codec's own generator: quotes, escapes,
    /// control characters, whitespace in `parameters`), every field of every entry.
    #[test]
    fn both_evaluators_read_the_wire_models_values_from_the_compact_history() {
        use crate::model::HistoryEntry;
        for seed in 0..60 {
            let mut rng = crate::history::tests::Rng::new(seed);
            let entries: Vec<HistoryEntry> = (0..1 + rng.next(5)).map(|_| rng.entry()).collect();
            let st = user_state(Profile::default(), None, entries.clone());
            let text = |s: &Option<crate::model::Text>| s.as_deref().map_or("()".into(), literal);
            for (i, e) in entries.iter().enumerate() {
                for (field, value) in [
                    ("event_id", &e.event_id),
                    ("eventName", &e.event_name),
                    ("event_type", &e.event_type),
                ] {
                    let n = entries
                        .iter()
                        .filter(|o| match field {
                            "event_id" => o.event_id == *value,
                            "eventName" => o.event_name == *value,
                            _ => o.event_type == *value,
                        })
                        .count();
                    let lit = text(value);
                    let counted = format!("history.filter(|h| h.{field} == {lit}).len() == {n}");
                    assert!(passes_both_ways(&counted, &st), "undecided: {counted}");
                    passes_both_ways(&format!("history[{i}].{field} == {lit}"), &st);
                }
                passes_both_ways(&format!("history[{i}].timestamp == {}", e.timestamp), &st);
                let Some(raw) = &e.parameters else {
                    passes_both_ways(&format!("history[{i}].parameters == ()"), &st);
                    continue;
                };
                let json: serde_json::Value = serde_json::from_str(&raw.text()).unwrap();
                // The generator's top-level keys are identifiers (`utm_source`, ...).
                for (key, value) in json.as_object().unwrap() {
                    if let Some(v) = value.as_str() {
                        let script = format!("history[{i}].parameters.{key} == {}", literal(v));
                        passes_both_ways(&script, &st);
                    }
                }
            }
        }
    }
}
