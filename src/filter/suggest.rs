//! "Did you mean ...?": the known names nearest to a misspelled one.

/// Up to three of `known` nearest to `name`, nearest first; none when nothing is close.
///
/// Names are compared by edit distance with case and underscores ignored (`eventtype`,
/// `event_Type` and `eventType` are the same name written differently), allowing about
/// one edit in three letters; among names as near, those written in the same style
/// (with or without underscores) come first.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let key = fold(name);
    let lower = name.to_lowercase();
    let allowed = (key.chars().count() / 3).clamp(1, 3);
    let mut scored: Vec<(usize, usize, &str)> = known
        .into_iter()
        .map(|k| (distance(&key, &fold(k)), k))
        .filter(|(d, _)| *d <= allowed)
        .map(|(d, k)| (d, distance(&lower, &k.to_lowercase()), k))
        .collect();
    scored.sort();
    let mut out: Vec<String> = Vec::new();
    for (_, _, k) in scored {
        if !out.iter().any(|o| o == k) {
            out.push(k.to_string());
        }
    }
    out.truncate(3);
    out
}

/// `name` in lower case without underscores.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Levenshtein distance (insertions, deletions, substitutions), by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names_first_and_nothing_far() {
        let known = [
            "event_type",
            "eventType",
            "event_name",
            "eventName",
            "domain",
        ];
        assert_eq!(nearest("eventTyp", known), ["eventType", "event_type"]);
        assert_eq!(
            nearest("EVENT_TYPE", known)[..2],
            ["event_type", "eventType"]
        );
        assert_eq!(nearest("domian", known), ["domain"]);
        assert!(nearest("country", known).is_empty());
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
    }
}
