//! Hints for mistakes that come from AviatorScript, the original job's rule language:
//! rhai's own messages ("Invalid character", "reserved keyword") do not say what to write
//! instead. A hint names the rhai way; the script is not translated.

use rhai::{LexError, ParseErrorType, Position};

const QUOTES: &str = "rhai strings take double quotes: \"page_view\" (single quotes hold one \
     character); numbers and booleans take none: 500, true";
const NIL: &str = "rhai has no `nil`: the empty value is `()`, as in `visit != ()`";
const LAMBDA: &str = "AviatorScript's `lambda(x) -> ... end` is a closure in rhai: `|x| ...`, as in `history.filter(|h| h.event_type == \"click\")`";
const COUNT: &str = "AviatorScript's `count(x)` is `x.len()` in rhai";
const STRING: &str = "AviatorScript's `string.contains(s, x)` is a method of the string in rhai: `s.contains(x)` (likewise `s.starts_with(x)`, `s.ends_with(x)`, `s.len()`)";
const SEQ: &str = "AviatorScript's `seq.*` functions are methods of arrays in rhai, taking closures `|x| ...`: `history.filter(|h| h.event_type == \"click\").len()`, `[\"a\", \"b\"].contains(x)`";
const INCLUDE: &str = "AviatorScript's `include(seq, x)` is `seq.contains(x)` in rhai";
const AND_OR: &str = "rhai writes `and`, `or` and `not` as `&&`, `||` and `!`";
const REGEX: &str = "rhai has no `=~` or regular expressions: use the string's methods, as in `s.contains(\"_page\")`, `s.starts_with(x)`, `s.ends_with(x)`";
const TERNARY: &str = "rhai writes `c ? a : b` as `if c { a } else { b }`";
const MATH: &str = "AviatorScript's `math.abs(x)` is a method of the number in rhai: `x.abs()` (likewise `x.floor()`, `x.round()`, `x.sqrt()` of a float)";

/// A hint for a syntax error at `pos` of `script`, if it looks like AviatorScript.
pub fn for_parse_error(script: &str, err: &ParseErrorType, pos: Position) -> Option<&'static str> {
    match err {
        ParseErrorType::BadInput(LexError::MalformedChar(_)) => Some(QUOTES),
        ParseErrorType::Reserved(word) if word == "nil" => Some(NIL),
        // `lambda(x) -> x > 1 end`: rhai stops at the arrow, a reserved symbol.
        ParseErrorType::Reserved(word) if word == "->" => Some(LAMBDA),
        // `s =~ /re/`: rhai stops at the tilde.
        ParseErrorType::Reserved(word) if word == "~" => Some(REGEX),
        ParseErrorType::UnknownOperator(op) if op == "?" => Some(TERNARY),
        _ if line_of(script, pos).is_some_and(|l| l.contains("lambda")) => Some(LAMBDA),
        _ if line_of(script, pos).is_some_and(|l| {
            l.split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|w| matches!(w, "and" | "or" | "not"))
        }) =>
        {
            Some(AND_OR)
        }
        _ => None,
    }
}

/// A hint for a call of `name`, a function that does not exist.
pub fn for_unknown_function(name: &str) -> Option<&'static str> {
    match name {
        "count" => Some(COUNT),
        "lambda" => Some(LAMBDA),
        "include" => Some(INCLUDE),
        "not" | "and" | "or" => Some(AND_OR),
        _ => None,
    }
}

/// A hint for `name`, a variable that does not exist.
pub fn for_unknown_variable(name: &str) -> Option<&'static str> {
    match name {
        "string" => Some(STRING),
        "seq" => Some(SEQ),
        "nil" => Some(NIL),
        "lambda" | "end" => Some(LAMBDA),
        "math" => Some(MATH),
        _ => None,
    }
}

/// The line of `script` at `pos`, if it has one.
fn line_of(script: &str, pos: Position) -> Option<&str> {
    script.lines().nth(pos.line()?.checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_hint(script: &str) -> Option<&'static str> {
        let err = rhai::Engine::new().compile(script).err()?;
        for_parse_error(script, &err.0, err.1)
    }

    #[test]
    fn aviator_habits_in_syntax_errors_get_hints() {
        assert_eq!(parse_hint("event.event_type == 'page_view'"), Some(QUOTES));
        assert_eq!(parse_hint("visit != nil"), Some(NIL));
        assert_eq!(
            parse_hint("seq.filter(history, lambda(h) -> h.event_type == \"a\" end)"),
            Some(LAMBDA)
        );
        assert_eq!(parse_hint("event.duration > (1"), None);
        assert_eq!(parse_hint("event.event_name =~ /.*_page/"), Some(REGEX));
        assert_eq!(
            parse_hint("event.duration > 1 ? true : false"),
            Some(TERNARY)
        );
        assert_eq!(for_unknown_function("not"), Some(AND_OR));
        assert_eq!(for_unknown_variable("math"), Some(MATH));
        assert_eq!(
            parse_hint("event.event_type == \"page_view\" and user.country == \"US\""),
            Some(AND_OR)
        );
    }
}
