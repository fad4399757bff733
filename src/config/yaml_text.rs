//! What the `config` crate's reading of the YAML file loses, found by reading the file's
//! own text: unquoted numbers that YAML prints otherwise than written (`0123` is `123`,
//! `1.10` is `1.1`, `0x1F2A` is `7978`), which a key of text would take as the number
//! printed again (the settings refuse them there: quote them), and numbers the crate
//! cannot read at all (`.inf`), which fail the whole file without a key.

use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, EventReceiver, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// One step from the top of the file to a value: a key, or a position in a list.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Key(String),
    Item(usize),
}

/// The unquoted scalars of `text` that YAML reads as a number printed otherwise than
/// written, each with its place and its text, where the text read as a number is the
/// same number: leading zeros and a `+` (`0123`, `+5`: 123, 5), fractions with trailing
/// zeros (`1.50`: 1.5); and whole numbers past 64 bits (a float in YAML) and exponents
/// past a float's range (`1e400`, `1e-400`).
pub fn numbers_written_otherwise(text: &str) -> Vec<(Vec<Step>, String)> {
    walk(text).found
}

/// The other unquoted scalars of `text` that YAML prints otherwise (`0x1F2A` is `7978`,
/// `1e3` is `1000`, `5.0` is `5`), with their places.
pub fn numbers_read_otherwise(text: &str) -> Vec<(Vec<Step>, String)> {
    walk(text).changed
}

fn walk(text: &str) -> Walk {
    let mut walk = Walk::default();
    // A file that does not parse has failed to load already, with the parser's message.
    let _ = Parser::new_from_str(text).load(&mut walk, false);
    walk
}

/// Whether YAML reads the unquoted `text` as a number that prints otherwise.
fn printed_otherwise(text: &str) -> bool {
    match Yaml::from_str(text) {
        Yaml::Integer(n) => n.to_string() != text,
        Yaml::Real(_) => text.parse::<f64>().is_ok_and(|f| f.to_string() != text),
        _ => false,
    }
}

/// The first number of `text` the `config` crate cannot read (YAML's `.inf`, `.nan`), as
/// `key.path` and the text written.
pub fn unreadable_number(text: &str) -> Option<(String, String)> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).ok()?;
    first_unreadable(String::new(), docs.first()?)
}

fn first_unreadable(key: String, value: &Yaml) -> Option<(String, String)> {
    match value {
        Yaml::Real(text) if text.parse::<f64>().is_err() => Some((key, text.clone())),
        Yaml::Hash(members) => members.iter().find_map(|(k, v)| {
            let name = match k {
                Yaml::String(s) | Yaml::Real(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                _ => return None,
            };
            let path = if key.is_empty() {
                name
            } else {
                format!("{key}.{name}")
            };
            first_unreadable(path, v)
        }),
        Yaml::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_unreadable(format!("{key}[{i}]"), v)),
        _ => None,
    }
}

/// Whether the unquoted `text` is a number YAML prints otherwise, which reads back as the
/// same number (or one no key of numbers takes: too large, or past what a float holds).
fn written_otherwise(text: &str) -> bool {
    match Yaml::from_str(text) {
        Yaml::Integer(n) => text.parse::<i64>() == Ok(n) && n.to_string() != text,
        Yaml::Real(_) => {
            let Ok(f) = text.parse::<f64>() else {
                return false;
            };
            let digits = text.trim_start_matches(['-', '+']);
            // Whole numbers past i64 (YAML makes them floats: 1.2345678901234568e22).
            let whole = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
            // Exponents past a float's range: `1e400` is inf, `1e-400` is 0.
            let lost = !f.is_finite()
                || (f == 0.0
                    && text.split(['e', 'E']).next().is_some_and(|m| {
                        m.contains(['1', '2', '3', '4', '5', '6', '7', '8', '9'])
                    }));
            let fraction = f.fract() != 0.0 && !text.contains(['e', 'E']) && f.to_string() != text;
            whole || lost || (f.is_finite() && fraction)
        }
        _ => false,
    }
}

/// Where the walk is in one mapping or list.
#[derive(Debug)]
enum Level {
    /// The key of the value being read (`None`: a key that is not a plain string), and
    /// whether the next node is a key.
    Map { key: Option<String>, at_key: bool },
    /// The position of the next item.
    List { next: usize },
}

#[derive(Default)]
struct Walk {
    levels: Vec<Level>,
    found: Vec<(Vec<Step>, String)>,
    changed: Vec<(Vec<Step>, String)>,
}

impl Walk {
    /// Whether the next node is a mapping's key.
    fn at_key(&self) -> bool {
        matches!(self.levels.last(), Some(Level::Map { at_key: true, .. }))
    }

    /// The place of the value being read, if every key on the way is text.
    fn place(&self) -> Option<Vec<Step>> {
        self.levels
            .iter()
            .map(|level| match level {
                Level::Map { key, .. } => key.clone().map(Step::Key),
                Level::List { next } => Some(Step::Item(*next)),
            })
            .collect()
    }

    /// A node ended: a key (its text, if a scalar), or a value.
    fn ended(&mut self, key_text: Option<String>) {
        match self.levels.last_mut() {
            Some(Level::Map { key, at_key }) if *at_key => {
                *key = key_text;
                *at_key = false;
            }
            Some(Level::Map { key, at_key }) => {
                *key = None;
                *at_key = true;
            }
            Some(Level::List { next }) => *next += 1,
            None => {}
        }
    }
}

impl EventReceiver for Walk {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::MappingStart(..) => self.levels.push(Level::Map {
                key: None,
                at_key: true,
            }),
            Event::SequenceStart(..) => self.levels.push(Level::List { next: 0 }),
            Event::MappingEnd | Event::SequenceEnd => {
                self.levels.pop();
                self.ended(None);
            }
            Event::Scalar(text, style, _, tag) => {
                if self.at_key() {
                    self.ended(Some(text));
                    return;
                }
                if style == TScalarStyle::Plain
                    && tag.is_none()
                    && let Some(place) = self.place()
                {
                    if written_otherwise(&text) {
                        self.found.push((place, text));
                    } else if printed_otherwise(&text) {
                        self.changed.push((place, text));
                    }
                }
                self.ended(None);
            }
            Event::Alias(_) => self.ended(None),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_printed_otherwise_are_found_with_their_place() {
        let text = "a:\n  group: 0123\n  b: [1, 007, {c: 1.50}]\n  d: +5\n  'q': \"0123\"\n\
                    e: 1.5\nf: 5.0\ng: 1e3\nh: 0x1F\ni: -08\n? [x]\n: 012\nj: &k 01\nl: *k\n\
                    m: 12345678901234567890123\nn: 1e400\no: 1e-400\np: 0e5\n";
        let key = |s: &str| Step::Key(s.into());
        assert_eq!(
            numbers_written_otherwise(text),
            vec![
                (vec![key("a"), key("group")], "0123".to_string()),
                (vec![key("a"), key("b"), Step::Item(1)], "007".into()),
                (
                    vec![key("a"), key("b"), Step::Item(2), key("c")],
                    "1.50".into()
                ),
                (vec![key("a"), key("d")], "+5".into()),
                (vec![key("i")], "-08".into()),
                (vec![key("j")], "01".into()),
                (vec![key("m")], "12345678901234567890123".into()),
                (vec![key("n")], "1e400".into()),
                (vec![key("o")], "1e-400".into()),
            ]
        );
    }

    #[test]
    fn numbers_yaml_prints_otherwise_are_found_with_their_place() {
        let text = "s: 0x1F2A\nt: [1e3, 5.0, 1.5, 7, 0123, \"0x1\"]\n";
        let key = |s: &str| Step::Key(s.into());
        assert_eq!(
            numbers_read_otherwise(text),
            vec![
                (vec![key("s")], "0x1F2A".to_string()),
                (vec![key("t"), Step::Item(0)], "1e3".into()),
                (vec![key("t"), Step::Item(1)], "5.0".into()),
            ]
        );
    }

    #[test]
    fn an_unreadable_number_is_named_by_its_key() {
        assert_eq!(
            unreadable_number("a:\n  b: [1, .inf]\n"),
            Some(("a.b[1]".into(), ".inf".into()))
        );
        assert_eq!(unreadable_number("a: 1.5\n"), None);
    }
}
