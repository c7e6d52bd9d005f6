//! Label and field selectors in the API server's query-string syntax.

use serde_json::Value;

/// One label requirement.
#[derive(Debug, Clone)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed `labelSelector`; all requirements must hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside a parenthesised value set.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_set(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

fn parse_requirement(raw: &str) -> Result<Requirement, String> {
    let text = raw.trim();
    let bad = || format!("unable to parse requirement: {raw:?}");
    if let Some(key) = text.strip_prefix('!') {
        let key = key.trim();
        return if valid_key(key) {
            Ok(Requirement::NotExists(key.to_string()))
        } else {
            Err(bad())
        };
    }
    if let Some((key, rest)) = text.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        let (op, values) = if let Some(v) = rest.strip_prefix("notin") {
            ("notin", v)
        } else if let Some(v) = rest.strip_prefix("in") {
            ("in", v)
        } else {
            ("", rest)
        };
        if !op.is_empty() && values.trim_start().starts_with('(') {
            let key = key.trim();
            let set = parse_set(values).ok_or_else(bad)?;
            if !valid_key(key) {
                return Err(bad());
            }
            return Ok(if op == "in" {
                Requirement::In(key.to_string(), set)
            } else {
                Requirement::NotIn(key.to_string(), set)
            });
        }
    }
    let split = |sep: &str| {
        text.split_once(sep)
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
    };
    let req = if let Some((k, v)) = split("!=") {
        Requirement::NotEquals(k, v)
    } else if let Some((k, v)) = split("==") {
        Requirement::Equals(k, v)
    } else if let Some((k, v)) = split("=") {
        Requirement::Equals(k, v)
    } else if let Some((k, v)) = split(">") {
        Requirement::GreaterThan(k, v.parse().map_err(|_| bad())?)
    } else if let Some((k, v)) = split("<") {
        Requirement::LessThan(k, v.parse().map_err(|_| bad())?)
    } else {
        Requirement::Exists(text.to_string())
    };
    let key = match &req {
        Requirement::Exists(k)
        | Requirement::NotExists(k)
        | Requirement::Equals(k, _)
        | Requirement::NotEquals(k, _)
        | Requirement::In(k, _)
        | Requirement::NotIn(k, _)
        | Requirement::GreaterThan(k, _)
        | Requirement::LessThan(k, _) => k,
    };
    if valid_key(key) { Ok(req) } else { Err(bad()) }
}

impl LabelSelector {
    /// Parses the query-string form; an empty string selects everything.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        split_top_level(text)
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, set) => label(k).is_some_and(|l| set.iter().any(|v| v == l)),
            Requirement::NotIn(k, set) => !label(k).is_some_and(|l| set.iter().any(|v| v == l)),
            Requirement::GreaterThan(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            Requirement::LessThan(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

/// A parsed `fieldSelector`: dotted paths compared as strings (`=`, `==`, `!=`).
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for raw in text.split(',').filter(|t| !t.trim().is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = raw.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = raw.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = raw.split_once('=') {
                (p, true, v)
            } else {
                return Err(format!(
                    "invalid selector: {raw:?}; can't understand {raw:?}"
                ));
            };
            let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                return Err(format!("invalid field selector path in {raw:?}"));
            }
            terms.push((path, equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, equal, expected)| {
            let found = path.iter().try_fold(obj, |node, key| node.get(key));
            let actual = match found {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == *expected) == *equal
        })
    }
}
