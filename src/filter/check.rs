//! Checks a compiled rule for names that do not exist, before it judges any event: a
//! property of `event`, `user`, `visit`, a history entry or `parameters` that is not a
//! field, a function that no package or script defines, a variable that is never set.
//!
//! rhai accepts all three at compile time and fails at run time, on every event: a rule
//! with a misspelled field rejects everything as script errors. The data's fields are
//! known (`fields`), so the AST is walked for them. Variables are left to rhai's own
//! strict-variables mode, which knows the scopes (closures, functions, blocks); the walk
//! only learns which names the script defines, for suggestions and to leave alone a
//! property of a variable that hides the data's (`let event = ...`).

use std::collections::{HashMap, HashSet};
use std::fmt;

use rhai::{AST, ASTNode, Dynamic, Engine, Expr, FnCallExpr, FnPtr, ParseErrorType, Position};
use rhai::{Scope, Stmt};

use super::fields::{EVENT_FIELDS, HISTORY_FIELDS, PARAM_FIELDS, PROFILE_FIELDS, VISIT_FIELDS};
use super::{hints, suggest};

/// The variables the job gives every evaluation.
pub const ROOTS: [&str; 4] = ["event", "user", "visit", "history"];

/// Functions rhai handles itself (not in any package), with any number of arguments.
const KEYWORDS: &[&str] = &[
    "print",
    "debug",
    "type_of",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_fn",
    "is_def_var",
    "eval",
];

/// Array methods whose closure gets the array's elements, with the index of the
/// element's parameter; `filter` gives entries on to the next method in a chain.
const ENTRY_CLOSURES: &[(&str, usize)] = &[
    ("filter", 0),
    ("map", 0),
    ("all", 0),
    ("some", 0),
    ("find", 0),
    ("find_map", 0),
    ("index_of", 0),
    ("retain", 0),
    ("drain", 0),
    ("reduce", 1),
    ("reduce_rev", 1),
];

/// One mistake, at a place in the script.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl Problem {
    fn at(pos: Position, message: String) -> Problem {
        Problem {
            line: pos.line().unwrap_or(0),
            column: pos.position().unwrap_or(0),
            message,
        }
    }

    /// "unknown `what` `name``of`", the nearest known names, and a hint.
    fn unknown<'a>(
        pos: Position,
        (what, name, of): (&str, &str, &str),
        known: impl IntoIterator<Item = &'a str>,
        hint: Option<&str>,
    ) -> Problem {
        let mut message = format!("unknown {what} `{name}`{of}");
        let near = suggest::nearest(name, known);
        if !near.is_empty() {
            let near: Vec<String> = near.iter().map(|n| format!("`{n}`")).collect();
            message += &format!(" (did you mean {}?)", near.join(" or "));
        }
        if let Some(hint) = hint {
            message += &format!(" (hint: {hint})");
        }
        Problem::at(pos, message)
    }
}

/// The problems of `ast` (compiled from `script` by `engine`), in script order; none
/// when every name exists. `engine` is lent for a strict compile, and left as it was.
pub fn check(engine: &mut Engine, ast: &AST, script: &str) -> Vec<Problem> {
    let names = Names::collect(ast);
    let functions = known_functions(engine, ast);
    let mut problems = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(e)) => names.expr(e, &functions, &mut problems),
            // A whole rule that is one comparison is a statement.
            Some(ASTNode::Stmt(Stmt::FnCall(f, pos))) if f.op_token.is_some() => {
                names.comparison(f, *pos, &mut problems)
            }
            Some(ASTNode::Stmt(Stmt::FnCall(f, pos))) => {
                names.call(f, *pos, &functions, &mut problems)
            }
            Some(ASTNode::Stmt(Stmt::Assignment(x))) => {
                problems.extend(names.assignment(&x.1.lhs, x.0.position()))
            }
            _ => {}
        }
        true
    });
    problems.extend(undefined_variable(engine, script, &names));
    problems.sort_by_key(|p| (p.line, p.column));
    problems.dedup();
    problems
}

/// The first variable rhai's strict mode finds undefined (with `event`, `user`, `visit`
/// and `history` in scope), if any.
fn undefined_variable(engine: &mut Engine, script: &str, names: &Names) -> Option<Problem> {
    let mut scope = Scope::new();
    for root in ROOTS {
        // Not constants: the optimizer would fold them into the AST.
        scope.push_dynamic(root, Dynamic::UNIT);
    }
    engine.set_strict_variables(true);
    let result = engine.compile_with_scope(&scope, script);
    engine.set_strict_variables(false);
    let err = result.err()?;
    let ParseErrorType::VariableUndefined(name) = &*err.0 else {
        return None;
    };
    let known = ROOTS
        .into_iter()
        .chain(names.defined.iter().map(String::as_str));
    let hint = hints::for_unknown_variable(name);
    Some(Problem::unknown(err.1, ("variable", name, ""), known, hint))
}

/// Every function name the engine and the script define.
fn known_functions(engine: &Engine, ast: &AST) -> HashSet<String> {
    let mut names: HashSet<String> = engine
        .collect_fn_metadata(None, |f| Some(f.metadata.name.to_string()), true)
        .into_iter()
        .collect();
    names.extend(ast.iter_fn_def().map(|f| f.name.to_string()));
    names.extend(KEYWORDS.iter().map(|k| k.to_string()));
    names
}

/// Which data a variable holds, when the checker knows it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Event,
    User,
    Visit,
    Entry,
}

impl Kind {
    fn fields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Event => EVENT_FIELDS,
            Kind::User => PROFILE_FIELDS,
            Kind::Visit => VISIT_FIELDS,
            Kind::Entry => HISTORY_FIELDS,
        }
    }

    /// What the field of JSON name `name` holds, if a scalar (for comparisons with a
    /// constant of another type, which rhai never finds equal).
    fn scalar(self, name: &str) -> Option<Scalar> {
        Some(match (self, name) {
            (_, "parameters") => return None,
            (_, "timestamp" | "duration") | (Kind::Visit, "actions") => Scalar::Number,
            (Kind::Event, "triggerable") | (Kind::Visit, "is_first_visit") => Scalar::Bool,
            (Kind::Event, n) if n.starts_with("is_") => Scalar::Bool,
            _ => Scalar::Text,
        })
    }

    /// Whose property it is, as the message ends.
    fn describe(self, var: &str) -> String {
        match self {
            Kind::Entry => format!(" of a history entry (`{var}`)"),
            _ => format!(" of `{var}`"),
        }
    }
}

/// What a chain of names reads (`Names::chain`).
struct Chain<'e> {
    /// Whose data it is.
    kind: Kind,
    /// As the script writes it (`history[...]` for an index computed by the script).
    written: String,
    names: Vec<&'e str>,
}

/// The type of a scalar field, or of a constant.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scalar {
    Number,
    Bool,
    Text,
}

impl Scalar {
    fn of_constant(e: &Expr) -> Option<(Scalar, String)> {
        Some(match e {
            Expr::IntegerConstant(n, _) => (Scalar::Number, n.to_string()),
            Expr::FloatConstant(n, _) => (Scalar::Number, n.to_string()),
            Expr::BoolConstant(b, _) => (Scalar::Bool, b.to_string()),
            Expr::StringConstant(t, _) => (Scalar::Text, format!("{:?}", t.as_str())),
            _ => return None,
        })
    }

    fn named(self) -> &'static str {
        match self {
            Scalar::Number => "a number",
            Scalar::Bool => "true or false",
            Scalar::Text => "text",
        }
    }

    /// How a constant of this type is introduced in a message.
    fn constant(self) -> &'static str {
        match self {
            Scalar::Number => "the number",
            Scalar::Bool => "the boolean",
            Scalar::Text => "the text",
        }
    }
}

/// The names a script defines, and what its variables hold.
#[derive(Default, Debug)]
struct Names {
    /// Names the script defines (let, const, loops, catch, declared parameters).
    defined: HashSet<String>,
    /// Variables holding history entries: loop variables over `history`, and the element
    /// parameter of closures given to `history.filter(...)` and the like.
    entries: HashSet<String>,
    /// A map literal can hold a function called as a method: methods are not checked.
    has_maps: bool,
}

impl Names {
    fn collect(ast: &AST) -> Names {
        let mut names = Names::default();
        // Closure name -> (parameters captured from outside, index of the entry parameter).
        let mut captured: HashMap<String, usize> = HashMap::new();
        let mut over_entries: HashMap<String, usize> = HashMap::new();
        ast.walk(&mut |path: &[ASTNode]| {
            match path.last() {
                Some(ASTNode::Stmt(Stmt::FnCall(f, _))) => {
                    if let Some((name, n)) = closure(f) {
                        captured.insert(name, n);
                    }
                }
                Some(ASTNode::Stmt(s)) => names.statement(s),
                // A map of constants is folded into a constant by the optimizer.
                Some(ASTNode::Expr(Expr::Map(..))) => names.has_maps = true,
                Some(ASTNode::Expr(Expr::DynamicConstant(d, _))) if d.is_map() => {
                    names.has_maps = true
                }
                Some(ASTNode::Expr(Expr::Dot(b, ..))) if is_var(&b.lhs, "history") => {
                    entry_closures(&b.rhs, &mut over_entries);
                }
                Some(ASTNode::Expr(Expr::FnCall(f, _))) => {
                    if let Some((name, n)) = closure(f) {
                        captured.insert(name, n);
                    }
                    entry_closure_call(f, &mut over_entries);
                }
                _ => {}
            }
            true
        });
        for def in ast.iter_fn_def() {
            let skip = captured.get(def.name.as_str()).copied().unwrap_or(0);
            let declared = def.params.iter().skip(skip).map(|p| p.to_string());
            let entry = over_entries.get(def.name.as_str()).copied();
            for (i, param) in declared.enumerate() {
                if Some(i) == entry {
                    names.entries.insert(param);
                } else {
                    names.defined.insert(param);
                }
            }
        }
        names
    }

    fn statement(&mut self, s: &Stmt) {
        match s {
            Stmt::Var(x, ..) => {
                self.defined.insert(x.0.name.to_string());
            }
            Stmt::For(x, _) => {
                let target = if is_var(&x.2.expr, "history") {
                    &mut self.entries
                } else {
                    &mut self.defined
                };
                target.insert(x.0.name.to_string());
                if let Some(counter) = &x.1 {
                    self.defined.insert(counter.name.to_string());
                }
            }
            Stmt::TryCatch(x, _) => {
                if let Expr::Variable(v, ..) = &x.expr {
                    self.defined.insert(v.1.to_string());
                }
            }
            _ => {}
        }
    }

    /// An assignment to the job's data (`event.event_type = "x"`, usually `==` meant):
    /// it fails on every event ("no writable property"), whatever the data.
    fn assignment(&self, target: &Expr, pos: Position) -> Option<Problem> {
        let root = root_var(target)?;
        if !ROOTS.contains(&root) || self.defined.contains(root) {
            return None;
        }
        Some(Problem::at(
            pos,
            format!(
                "assigns to `{root}`: a rule only reads event, user, visit and history, \
                 and this fails on every event (hint: `==` compares)"
            ),
        ))
    }

    /// What `name` holds, when it is sure: a name the script also defines otherwise, or
    /// uses both for the data and for entries, is not checked.
    fn kind(&self, name: &str) -> Option<Kind> {
        if self.defined.contains(name) {
            return None;
        }
        let root = match name {
            "event" => Some(Kind::Event),
            "user" => Some(Kind::User),
            "visit" => Some(Kind::Visit),
            _ => None,
        };
        match (root, self.entries.contains(name)) {
            (Some(kind), false) => Some(kind),
            (None, true) if !ROOTS.contains(&name) => Some(Kind::Entry),
            _ => None,
        }
    }

    fn expr(&self, e: &Expr, functions: &HashSet<String>, out: &mut Vec<Problem>) {
        match e {
            // `root.prop...`, `root["prop"]`, `history[i].prop`
            Expr::Dot(b, ..) => self.property(&b.lhs, &b.rhs, out),
            Expr::Index(b, ..) => match (&b.lhs, &b.rhs) {
                (Expr::Variable(v, ..), Expr::StringConstant(s, pos)) if v.2.is_empty() => {
                    if let Some(kind) = self.kind(&v.1) {
                        field(kind.fields(), s, *pos, &kind.describe(&v.1), out);
                    }
                }
                // `event["parameters"]["utm_source"]`, `event["parameters"].utm_source`
                (Expr::Variable(v, ..), Expr::Index(c, ..) | Expr::Dot(c, ..))
                    if v.2.is_empty() && matches!(c.lhs, Expr::StringConstant(..)) =>
                {
                    let (Some(kind), Expr::StringConstant(s, pos)) = (self.kind(&v.1), &c.lhs)
                    else {
                        return;
                    };
                    if field(kind.fields(), s, *pos, &kind.describe(&v.1), out)
                        && s == "parameters"
                        && let Some((param, pos)) = param_name(&c.rhs)
                    {
                        field(PARAM_FIELDS, param, pos, " of `parameters`", out);
                    }
                }
                (lhs, Expr::Dot(d, ..))
                    if is_var(lhs, "history") && !self.defined.contains("history") =>
                {
                    step(Kind::Entry, "history[...]", &d.rhs, out);
                }
                _ => {}
            },
            Expr::FnCall(f, pos) if f.op_token.is_some() => self.comparison(f, *pos, out),
            Expr::FnCall(f, pos) => self.call(f, *pos, functions, out),
            Expr::MethodCall(f, pos) if !self.has_maps && !functions.contains(f.name.as_str()) => {
                out.push(unknown_call(*pos, "method", &f.name, functions));
            }
            _ => {}
        }
    }

    fn property(&self, lhs: &Expr, rhs: &Expr, out: &mut Vec<Problem>) {
        let Expr::Variable(v, ..) = lhs else {
            return;
        };
        if !v.2.is_empty() {
            return;
        }
        if let Some(kind) = self.kind(&v.1) {
            step(kind, &v.1, rhs, out);
        }
    }

    /// A field of the event, visit, profile or a history entry, or a `utm_*` of
    /// `parameters` (always text), compared with a constant of another type
    /// (`event.duration > "500"`, `event.is_https == "true"`, `event.parameters.utm_id ==
    /// 7`): never equal, never ordered, on every event.
    fn comparison(&self, f: &FnCallExpr, pos: Position, out: &mut Vec<Problem>) {
        if !is_comparison(&f.name) || f.args.len() != 2 {
            return;
        }
        for (a, b) in [(&f.args[0], &f.args[1]), (&f.args[1], &f.args[0])] {
            if let Some((field, holds, json, kind)) = self.typed_field(a)
                && let Some((constant, text)) = Scalar::of_constant(b)
                && holds != constant
            {
                let fix = match (holds, constant) {
                    (Scalar::Number, Scalar::Text)
                        if text.trim_matches('"').parse::<f64>().is_ok() =>
                    {
                        format!("write {}", text.trim_matches('"'))
                    }
                    (Scalar::Bool, Scalar::Text) if matches!(&*text, "\"true\"" | "\"false\"") => {
                        format!("write {}", text.trim_matches('"'))
                    }
                    (Scalar::Text, Scalar::Number) if !matches!(f.name.as_str(), "==" | "!=") => {
                        format!(
                            "write \"{text}\" to order it as text, or `parse_float({field})` \
                             to order it as a number"
                        )
                    }
                    (Scalar::Text, _) => format!("write \"{text}\""),
                    _ if json == "timestamp" => {
                        "compare it with a number of ms since 1970, as 1735689600000".to_string()
                    }
                    _ => format!("compare it with {}", holds.named()),
                };
                let every = match kind {
                    Kind::Entry => "for every history entry",
                    _ => "on every event",
                };
                let outcome = match f.name.as_str() {
                    "==" => format!("never equal: `==` is false {every}"),
                    "!=" => format!("never equal: `!=` is true {every}"),
                    _ => format!("never ordered: the comparison is false {every}"),
                };
                out.push(Problem::at(
                    pos,
                    format!(
                        "`{field}` holds {}, compared here with {} {text}: {outcome} ({fix})",
                        holds.named(),
                        constant.constant()
                    ),
                ));
            }
        }
    }

    /// The scalar field `e` reads (`event.duration`, `event["duration"]`,
    /// `visit.isFirstVisit`, `h.timestamp`, `history[0].timestamp`, a `utm_*` of
    /// `parameters`), as written, what it holds, its JSON name, and whose it is.
    fn typed_field(&self, e: &Expr) -> Option<(String, Scalar, &'static str, Kind)> {
        let chain = self.chain(e)?;
        let json = match chain.names[..] {
            [name] => {
                chain
                    .kind
                    .fields()
                    .iter()
                    .find(|(j, c)| *j == name || *c == name)?
                    .0
            }
            // The original's model has every `utm_*` as text.
            ["parameters", name] if matches!(chain.kind, Kind::Event | Kind::Entry) => {
                PARAM_FIELDS
                    .iter()
                    .find(|(j, c)| (*j == name || *c == name) && j.starts_with("utm_"))?
                    .0
            }
            _ => return None,
        };
        let holds = match chain.names.len() {
            1 => chain.kind.scalar(json)?,
            _ => Scalar::Text,
        };
        Some((chain.written, holds, json, chain.kind))
    }

    /// The names `e` reads, one after another, from a variable whose data the checker
    /// knows: `event.parameters["utm_id"]` reads `parameters`, then `utm_id`, of `event`;
    /// `history[i].timestamp` reads `timestamp` of a history entry. None where the
    /// chain holds anything else (a method call, a computed key).
    fn chain<'e>(&self, e: &'e Expr) -> Option<Chain<'e>> {
        let (Expr::Dot(b, ..) | Expr::Index(b, ..)) = e else {
            return None;
        };
        let Expr::Variable(v, ..) = &b.lhs else {
            return None;
        };
        if !v.2.is_empty() {
            return None;
        }
        // How each step is taken, as the step before says: `.name` or `["name"]`.
        let in_brackets = matches!(e, Expr::Index(..));
        let (kind, mut written, mut step) =
            if v.1 == "history" && in_brackets && !self.defined.contains("history") {
                // `history[i]`, then what is read of the entry
                let (Expr::Dot(d, ..) | Expr::Index(d, ..)) = &b.rhs else {
                    return None;
                };
                let entry = matches!(b.rhs, Expr::Index(..));
                let written = match &d.lhs {
                    Expr::IntegerConstant(i, _) => format!("history[{i}]"),
                    _ => "history[...]".to_string(),
                };
                (Kind::Entry, written, Some((&d.rhs, entry)))
            } else {
                (
                    self.kind(&v.1)?,
                    v.1.to_string(),
                    Some((&b.rhs, in_brackets)),
                )
            };
        let mut names = Vec::new();
        while let Some((e, in_brackets)) = step {
            let (name, next) = match e {
                Expr::Dot(d, ..) | Expr::Index(d, ..) => {
                    (&d.lhs, Some((&d.rhs, matches!(e, Expr::Index(..)))))
                }
                _ => (e, None),
            };
            let name = match (name, in_brackets) {
                (Expr::Property(p, _), false) => p.2.as_str(),
                (Expr::StringConstant(s, _), true) => s.as_str(),
                _ => return None,
            };
            if in_brackets {
                written.push_str(&format!("[{name:?}]"));
            } else {
                written.push('.');
                written.push_str(name);
            }
            names.push(name);
            step = next;
        }
        Some(Chain {
            kind,
            written,
            names,
        })
    }

    fn call(
        &self,
        f: &FnCallExpr,
        pos: Position,
        functions: &HashSet<String>,
        out: &mut Vec<Problem>,
    ) {
        if f.op_token.is_some() || f.is_qualified() || functions.contains(f.name.as_str()) {
            return;
        }
        out.push(unknown_call(pos, "function", &f.name, functions));
    }
}

/// A call of `name`, which no package or script defines.
fn unknown_call(pos: Position, what: &str, name: &str, functions: &HashSet<String>) -> Problem {
    // Operators are functions too, but no one misspells a name into one.
    let named = functions
        .iter()
        .map(String::as_str)
        .filter(|f| f.starts_with(|c: char| c.is_alphabetic() || c == '_') && !f.contains('$'));
    let hint = hints::for_unknown_function(name);
    Problem::unknown(pos, (what, name, ""), named, hint)
}

/// Checks the first property of the chain `rhs` read from a variable of `kind` named
/// `var`, and the property of `parameters` after it.
fn step(kind: Kind, var: &str, rhs: &Expr, out: &mut Vec<Problem>) {
    let Some((name, pos, rest)) = first_property(rhs) else {
        return;
    };
    let fields = kind.fields();
    if !field(fields, name, pos, &kind.describe(var), out) || name != "parameters" {
        return;
    }
    if let Some((param, pos)) = rest.and_then(param_name) {
        field(PARAM_FIELDS, param, pos, " of `parameters`", out);
    }
}

/// The field of `parameters` a chain after it starts with: `.utm_source` or
/// `["utm_source"]`.
fn param_name(e: &Expr) -> Option<(&str, Position)> {
    match e {
        Expr::StringConstant(s, pos) => Some((s.as_str(), *pos)),
        Expr::Dot(b, ..) | Expr::Index(b, ..) => match &b.lhs {
            Expr::StringConstant(s, pos) => Some((s.as_str(), *pos)),
            _ => first_property(e).map(|(name, pos, _)| (name, pos)),
        },
        _ => first_property(e).map(|(name, pos, _)| (name, pos)),
    }
}

/// Whether `name` is one of `fields`; if not, records the problem (`of`: whose).
fn field(
    fields: &[(&str, &str)],
    name: &str,
    pos: Position,
    of: &str,
    out: &mut Vec<Problem>,
) -> bool {
    if fields.iter().any(|(j, c)| *j == name || *c == name) {
        return true;
    }
    let known = fields.iter().flat_map(|(j, c)| [*j, *c]);
    out.push(Problem::unknown(pos, ("property", name, of), known, None));
    false
}

/// The property a chain starts with (`.prop`, `.prop.more`, `.prop[i]`), and, for
/// `.prop.more`, the rest of the chain.
fn first_property(e: &Expr) -> Option<(&str, Position, Option<&Expr>)> {
    match e {
        Expr::Property(p, pos) => Some((p.2.as_str(), *pos, None)),
        Expr::Dot(b, ..) => match &b.lhs {
            Expr::Property(p, pos) => Some((p.2.as_str(), *pos, Some(&b.rhs))),
            _ => None,
        },
        // `.prop[...]`: the rest is the index, and what follows it.
        Expr::Index(b, ..) => match &b.lhs {
            Expr::Property(p, pos) => Some((p.2.as_str(), *pos, Some(&b.rhs))),
            _ => None,
        },
        _ => None,
    }
}

/// The variable an access path starts from (`event` in `event.parameters.x`).
fn root_var(e: &Expr) -> Option<&str> {
    match e {
        Expr::Variable(v, ..) if v.2.is_empty() => Some(v.1.as_str()),
        Expr::Dot(x, ..) | Expr::Index(x, ..) => root_var(&x.lhs),
        _ => None,
    }
}

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | "<" | ">" | "<=" | ">=")
}

fn is_var(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::Variable(v, ..) if v.2.is_empty() && v.1 == name)
}

/// The name of the closure `e` is (a function pointer, possibly with captured
/// variables curried in: `Stmt` blocks of `Share` and `curry(...)`), and how many
/// captured variables come before its declared parameters.
fn closure_of(e: &Expr) -> Option<(String, usize)> {
    match e {
        Expr::DynamicConstant(d, _) => Some((d.read_lock::<FnPtr>()?.fn_name().to_string(), 0)),
        Expr::FnCall(f, _) => closure(f),
        Expr::Stmt(block) => match block.statements().last()? {
            Stmt::Expr(e) => closure_of(e),
            Stmt::FnCall(f, _) => closure(f),
            _ => None,
        },
        _ => None,
    }
}

/// `curry(closure, captured...)`: the closure's name and the number captured.
fn closure(f: &FnCallExpr) -> Option<(String, usize)> {
    if f.name != "curry" {
        return None;
    }
    let (name, _) = closure_of(f.args.first()?)?;
    Some((name, f.args.len() - 1))
}

/// Records the closures of a method chain on `history` that get its entries.
fn entry_closures(chain: &Expr, out: &mut HashMap<String, usize>) {
    let (call, rest) = match chain {
        Expr::MethodCall(m, _) => (m, None),
        Expr::Dot(b, ..) => match &b.lhs {
            Expr::MethodCall(m, _) => (m, Some(&b.rhs)),
            _ => return,
        },
        _ => return,
    };
    let Some((_, param)) = ENTRY_CLOSURES.iter().find(|(n, _)| *n == call.name) else {
        return;
    };
    if let Some((name, _)) = call.args.first().and_then(closure_of) {
        out.insert(name, *param);
    }
    if call.name == "filter"
        && let Some(rest) = rest
    {
        entry_closures(rest, out);
    }
}

/// `filter(history, |h| ...)`: the function-call form of the same methods.
fn entry_closure_call(f: &FnCallExpr, out: &mut HashMap<String, usize>) {
    let Some((_, param)) = ENTRY_CLOSURES.iter().find(|(n, _)| *n == f.name) else {
        return;
    };
    if let [list, fun] = f.args.as_slice()
        && is_var(list, "history")
        && let Some((name, _)) = closure_of(fun)
    {
        out.insert(name, *param);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Filter, FilterError, FilterLimits};

    /// The problems of `script`, as `validate` prints them; empty when it passes.
    fn problems(script: &str) -> String {
        match Filter::compile_checked(script, "rule.rhai", &FilterLimits::default()) {
            Ok(_) => String::new(),
            Err(e @ FilterError::Check { .. }) => e.to_string(),
            Err(e) => panic!("{script}: not a check error: {e}"),
        }
    }

    #[test]
    fn an_assignment_to_the_data_is_refused_with_a_hint() {
        let p = problems("event.event_type = \"page_view\"");
        assert!(p.contains("rule.rhai:1:18"), "{p}");
        assert!(
            p.contains("assigns to `event`") && p.contains("`==` compares"),
            "{p}"
        );
        assert!(problems("user.country = 1; true").contains("assigns to `user`"));
        // The script's own variables may change.
        assert_eq!(problems("let n = 0; n = 1; n == 1"), "");
    }

    #[test]
    fn a_misspelled_field_names_place_name_and_nearest_names() {
        let p = problems("user.country == \"US\" &&\n  event.eventTyp == \"page_view\"");
        assert_eq!(
            p,
            "rule.rhai:2:9: unknown property `eventTyp` of `event` (did you mean `eventType` or `event_type`?)"
        );
        for (script, name) in [
            (
                "user.contry == \"US\"",
                "`contry` of `user` (did you mean `country`",
            ),
            (
                "visit != () && visit.landingpage == \"/\"",
                "`landingpage` of `visit` (did you mean `landingPage`",
            ),
            (
                "event[\"evnt_type\"] == \"x\"",
                "`evnt_type` of `event` (did you mean `event_type`",
            ),
            (
                "event.parameters.utm_sorce == \"g\"",
                "`utm_sorce` of `parameters` (did you mean `utm_source`",
            ),
            (
                "event.parameters.utm_id == 7",
                "`event.parameters.utm_id` holds text, compared here with the number 7: never equal: `==` is false on every event (write \"7\")",
            ),
            (
                "event.duration > \"500\"",
                "`event.duration` holds a number, compared here with the text \"500\": never ordered: the comparison is false on every event (write 500)",
            ),
            (
                "event.isHttps == \"true\"",
                "`event.isHttps` holds true or false, compared here with the text \"true\": never equal: `==` is false on every event (write true)",
            ),
            (
                "visit != () && \"10\" < visit.actions",
                "`visit.actions` holds a number, compared here with the text \"10\"",
            ),
            (
                "event.timestamp > \"2025-01-01\"",
                "`event.timestamp` holds a number, compared here with the text \"2025-01-01\": never ordered: the comparison is false on every event (compare it with a number of ms since 1970, as 1735689600000)",
            ),
            (
                "user.country == 7",
                "`user.country` holds text, compared here with the number 7: never equal: `==` is false on every event (write \"7\")",
            ),
            (
                "history.filter(|h| h.timestamp > \"1\").len() > 0",
                "`h.timestamp` holds a number, compared here with the text \"1\"",
            ),
            (
                "event.triggerable == 1",
                "`event.triggerable` holds true or false, compared here with the number 1: never equal: `==` is false on every event (compare it with true or false)",
            ),
            (
                "event[\"duration\"] > \"500\"",
                "`event[\"duration\"]` holds a number, compared here with the text \"500\": never ordered",
            ),
            (
                "event.isHttps != \"true\"",
                "compared here with the text \"true\": never equal: `!=` is true on every event (write true)",
            ),
            (
                "history.len() > 0 && history[0].timestamp == \"x\"",
                "`history[0].timestamp` holds a number, compared here with the text \"x\": never equal: `==` is false for every history entry",
            ),
            (
                "history.len() > 0 && history[0][\"timestamp\"] >= \"5\"",
                "`history[0][\"timestamp\"]` holds a number, compared here with the text \"5\": never ordered: the comparison is false for every history entry (write 5)",
            ),
            (
                "let i = 1; history.len() > i && history[i].timestamp == \"x\"",
                "`history[...].timestamp` holds a number",
            ),
            (
                "history.filter(|h| h[\"timestamp\"] < \"1\").len() > 0",
                "`h[\"timestamp\"]` holds a number, compared here with the text \"1\"",
            ),
            (
                "visit != () && visit[\"isFirstVisit\"] == \"true\"",
                "`visit[\"isFirstVisit\"]` holds true or false",
            ),
            (
                "history.filter(|h| h.parameters[\"utmId\"] != 7.5).len() > 0",
                "`h.parameters[\"utmId\"]` holds text, compared here with the number 7.5: never equal: `!=` is true for every history entry",
            ),
            (
                "event[\"parameters\"][\"utm_id\"] == 7",
                "`event[\"parameters\"][\"utm_id\"]` holds text, compared here with the number 7",
            ),
            (
                "event[\"parameters\"].utm_id == 7",
                "`event[\"parameters\"].utm_id` holds text",
            ),
            (
                "history.len() > 0 && history[0].parameters.utm_id == 7",
                "`history[0].parameters.utm_id` holds text",
            ),
            (
                "history.len() > 0 && history[0].parameters[\"utm_id\"] == 7",
                "`history[0].parameters[\"utm_id\"]` holds text",
            ),
            (
                "history.len() > 0 && history[0][\"parameters\"].utm_id == 7",
                "`history[0][\"parameters\"].utm_id` holds text",
            ),
            (
                "event.parameters.utm_source == true",
                "`event.parameters.utm_source` holds text, compared here with the boolean true: never equal: `==` is false on every event (write \"true\")",
            ),
            (
                "3 < event.parameters.utm_term",
                "`event.parameters.utm_term` holds text, compared here with the number 3: never ordered: the comparison is false on every event (write \"3\" to order it as text, or `parse_float(event.parameters.utm_term)` to order it as a number)",
            ),
            (
                "event.parameters[\"utm_sorce\"] == \"g\"",
                "`utm_sorce` of `parameters` (did you mean `utm_source`",
            ),
            (
                "event.parameters[\"utm_sorce\"].len() > 0",
                "`utm_sorce` of `parameters`",
            ),
            (
                "event[\"parameters\"][\"utmSorce\"] == \"g\"",
                "`utmSorce` of `parameters` (did you mean `utmSource`",
            ),
            (
                "event[\"paramters\"][\"utm_source\"] == \"g\"",
                "`paramters` of `event` (did you mean `parameters`",
            ),
            (
                "event[\"parameters\"].utm_sorce.len() > 1",
                "`utm_sorce` of `parameters`",
            ),
            (
                "event.parameters.utmSource.len() > 0 && event.paramters != ()",
                "`paramters` of `event`",
            ),
        ] {
            assert!(p_contains(script, name), "{script}: {}", problems(script));
        }
    }

    fn p_contains(script: &str, needle: &str) -> bool {
        problems(script).contains(needle)
    }

    #[test]
    fn history_entries_are_checked_in_closures_loops_and_by_index() {
        for script in [
            "history.filter(|h| h.event_typ == \"click\").len() > 2",
            "history.filter(|h| h.timestamp > 0).map(|h| h.event_typ).len() > 0",
            "filter(history, |h| h.event_typ == \"click\").len() > 2",
            "let n = 0; for h in history { if h.event_typ == \"click\" { n += 1; } } n > 2",
            "history[0].event_typ == \"click\"",
            "history.filter(|h| h.event_typ == event.event_type).len() > 0",
        ] {
            assert!(
                p_contains(script, "unknown property `event_typ` of a history entry"),
                "{script}: {}",
                problems(script)
            );
        }
        // The event's own fields that entries lack.
        assert!(p_contains(
            "history.filter(|h| h.domain == \"x\").len() > 0",
            "`domain` of a history entry"
        ));
    }

    #[test]
    fn unknown_functions_and_variables_are_refused_with_hints() {
        let p = problems("count(history) > 2");
        assert!(
            p.starts_with("rule.rhai:1:1: unknown function `count`"),
            "{p}"
        );
        assert!(p.contains("`x.len()`"), "{p}");
        let p = problems("string.contains(event.domain, \"shop\")");
        assert!(
            p.contains("unknown variable `string`") && p.contains("`s.contains(x)`"),
            "{p}"
        );
        let p = problems("seq.contains(history, 1)");
        assert!(
            p.contains("unknown variable `seq`") && p.contains("closures"),
            "{p}"
        );
        let p = problems("let carts = 1;\ncart > 0");
        assert_eq!(
            p,
            "rule.rhai:2:1: unknown variable `cart` (did you mean `carts`?)"
        );
        let p = problems("evnt.event_type == \"x\"");
        assert!(p.contains("(did you mean `event`?)"), "{p}");
        let p = problems("event.event_type.starts_wiht(\"x\")");
        assert!(
            p.contains("unknown method `starts_wiht` (did you mean `starts_with`"),
            "{p}"
        );
    }

    #[test]
    fn valid_rules_pass() {
        for script in [
            "event.eventDisplayName == \"Home\" && event.eventDisplayname == \"Home\"",
            "let event = #{ kind: 1 }; event.kind == 1",
            "let m = #{ f: |x| x > 1 }; m.f(2)",
            "fn big(e) { e.duration > 10 } big(event)",
            "history.filter(|h| h.event_type == event.event_type).len() > 0",
            "history.map(|h| h.timestamp).reduce(|a, b| a + b, 0) > 0",
            "history.reduce(|n, h| if h.event_type == \"click\" { n + 1 } else { n }, 0) > 1",
            "for (h, i) in history { if i > 1 && h.eventType == \"x\" { return true; } } false",
            "try { event.duration / 0 > 1 } catch (err) { err != () }",
            "history.filter(|event| event.timestamp > 1).len() > 0",
            "event.parameters.custom_params.anything == () && event.parameters[\"utm_id\"] == ()",
            "event.parameters[\"utmSource\"].len() > 0 && event[\"parameters\"].utm_term == ()",
            "let f = Fn(\"is_def_var\"); type_of(f) == \"Fn\" && \"a\" in [\"a\"]",
            "visit?.landing_page == \"/sale\"",
            "event.parameters.utm_id == \"7\" && event.parameters.utm_id.len() > 1",
            "event.parameters.custom_params.value > 100 && event.duration == 7",
            "let event = #{ parameters: #{ utm_id: 7 } }; event.parameters.utm_id == 7",
            "event.duration.to_string() == \"5\" && event[\"duration\"] > 5",
            "history.len() > 1 && history[1][\"timestamp\"] < event.timestamp",
            "history.len() > 0 && history[0].parameters.custom_params.n == 7",
            "history.len() > 0 && history[0].parameters.utm_id.len() == 7",
            "event[\"parameters\"][\"custom_params\"][\"utm_id\"] == 7",
            "let i = 0; history.len() > i && history[i].timestamp > 0",
        ] {
            assert_eq!(problems(script), "", "{script}");
        }
    }
}
