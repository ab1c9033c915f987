//! Going on past an unknown field: the field is reported with the nearest known name, then
//! blanked out of a copy of the text (byte offsets kept, so every later problem still
//! names its true place) and the copy is read again, so one misspelling does not hide the
//! rest of the file's problems.

use std::ops::Range;

use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

/// The field a serde "unknown field" message names, and the fields it expected.
pub(super) fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let field = rest[..end].to_string();
    let expected = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field, expected))
}

/// Edit distance (insertions, deletions, substitutions and swaps of neighbours).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The known name closest to `field`, when it is close enough to be a misspelling.
pub(super) fn nearest<'a>(field: &str, known: &'a [String]) -> Option<&'a str> {
    let limit = (field.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (distance(field, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Blanks the entry whose key starts at `key_at` in `text`: spaces over every byte but
/// newlines. False when no entry starts there (nothing was changed).
pub(super) fn blank_entry(text: &mut String, key_at: usize) -> bool {
    let Some(region) = entry_region(text, key_at) else {
        return false;
    };
    let blanked: String = text[region.clone()]
        .bytes()
        .map(|b| if b == b'\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(region, &blanked);
    true
}

fn entry_region(text: &str, key_at: usize) -> Option<Range<usize>> {
    let doc = ImDocument::parse(text).ok()?;
    in_table(doc.as_table(), key_at, text)
}

fn in_table(t: &Table, key_at: usize, text: &str) -> Option<Range<usize>> {
    for (k, item) in t.iter() {
        let key = t.key(k).and_then(|k| k.span());
        if key.as_ref().is_some_and(|s| s.start == key_at) {
            return match item {
                Item::Value(v) => Some(key_at..v.span()?.end),
                // A table or array of tables written with a header: from the header's line
                // to the next header.
                Item::Table(_) | Item::ArrayOfTables(_) => Some(header_section(text, key_at)),
                Item::None => None,
            };
        }
        let found = match item {
            Item::Table(inner) => in_table(inner, key_at, text),
            Item::ArrayOfTables(a) => a.iter().find_map(|inner| in_table(inner, key_at, text)),
            Item::Value(Value::InlineTable(it)) => in_inline(it, key_at, text),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn in_inline(t: &InlineTable, key_at: usize, text: &str) -> Option<Range<usize>> {
    for (k, v) in t.iter() {
        let key = t.key(k).and_then(|k| k.span());
        if key.as_ref().is_some_and(|s| s.start == key_at) {
            let end = v.span()?.end;
            // Take a separating comma with it, so what is left is still valid TOML.
            let before = text[..key_at].trim_end();
            if before.ends_with(',') {
                return Some(before.len() - 1..end);
            }
            let after = &text[end..];
            let skipped = after.len() - after.trim_start().len();
            if after.trim_start().starts_with(',') {
                return Some(key_at..end + skipped + 1);
            }
            return Some(key_at..end);
        }
        if let Value::InlineTable(inner) = v {
            if let Some(r) = in_inline(inner, key_at, text) {
                return Some(r);
            }
        }
    }
    None
}

/// From the start of the line holding `at` to the start of the next line that opens a
/// table (`[`), or the end of the text.
fn header_section(text: &str, at: usize) -> Range<usize> {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let mut end = text.len();
    let mut pos = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
    while pos < text.len() {
        let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
        if text[pos..line_end].trim_start().starts_with('[') {
            end = pos;
            break;
        }
        pos = line_end;
    }
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelling_finds_its_field() {
        let (field, known) = unknown_field(
            "unknown field `probe_intervall`, expected one of `probe_interval`, `fall`, `rise`",
        )
        .expect("parsed");
        assert_eq!(field, "probe_intervall");
        assert_eq!(known, ["probe_interval", "fall", "rise"]);
        assert_eq!(nearest(&field, &known), Some("probe_interval"));
        assert_eq!(nearest("colour", &known), None);
        assert_eq!(
            nearest("adress", &["address".into(), "name".into()]),
            Some("address")
        );
    }

    #[test]
    fn blanking_keeps_offsets_and_leaves_valid_toml() {
        let mut t = "[timing]\nfall = 3\nfalll = [\n 1,\n 2]\nrise = 2\n".to_string();
        let at = t.find("falll").expect("there");
        assert!(blank_entry(&mut t, at));
        assert_eq!(
            t.len(),
            "[timing]\nfall = 3\nfalll = [\n 1,\n 2]\nrise = 2\n".len()
        );
        assert_eq!(t.matches('\n').count(), 6);
        let v: toml::Table = toml::from_str(&t).expect("still TOML");
        assert_eq!(v["timing"].as_table().map(|t| t.len()), Some(2));

        for src in [
            "check = { kind = \"http\", pth = \"/\", expect = 200 }\n",
            "check = { pth = \"/\", kind = \"http\" }\n",
            "check = { pth = \"/\" }\n",
        ] {
            let mut t = src.to_string();
            let at = t.find("pth").expect("there");
            assert!(blank_entry(&mut t, at), "{src}");
            let v: toml::Table = toml::from_str(&t).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert!(v["check"].get("pth").is_none(), "{t}");
        }

        let mut t =
            "[cluster]\nname = \"x\"\n[timingg]\nfall = 3\n\n[[sites]]\nname = \"a\"\n".to_string();
        let at = t.find("timingg").expect("there");
        assert!(blank_entry(&mut t, at));
        let v: toml::Table = toml::from_str(&t).expect("still TOML");
        assert!(
            v.get("timingg").is_none() && v.get("sites").is_some(),
            "{t}"
        );
    }
}
