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
/// written (`0123` is `123`, `1.10` is `1.1`, `0x1F2A` is `7978`, `1e3` is `1000`, a
/// 25-digit number a float), each with its place and its text.
pub fn numbers_printed_otherwise(text: &str) -> Vec<(Vec<Step>, String)> {
    let mut walk = Walk::default();
    // A file that does not parse has failed to load already, with the parser's message.
    let _ = Parser::new_from_str(text).load(&mut walk, false);
    walk.found
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
                    && printed_otherwise(&text)
                    && let Some(place) = self.place()
                {
                    self.found.push((place, text));
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
                    m: 12345678901234567890123\nn: 1e400\no: 1e-400\np: 7\n";
        let key = |s: &str| Step::Key(s.into());
        assert_eq!(
            numbers_printed_otherwise(text),
            vec![
                (vec![key("a"), key("group")], "0123".to_string()),
                (vec![key("a"), key("b"), Step::Item(1)], "007".into()),
                (
                    vec![key("a"), key("b"), Step::Item(2), key("c")],
                    "1.50".into()
                ),
                (vec![key("a"), key("d")], "+5".into()),
                (vec![key("f")], "5.0".into()),
                (vec![key("g")], "1e3".into()),
                (vec![key("h")], "0x1F".into()),
                (vec![key("i")], "-08".into()),
                (vec![key("j")], "01".into()),
                (vec![key("m")], "12345678901234567890123".into()),
                (vec![key("n")], "1e400".into()),
                (vec![key("o")], "1e-400".into()),
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
