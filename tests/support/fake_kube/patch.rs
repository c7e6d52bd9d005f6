//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902), as the API server applies them.

use serde_json::{Map, Value};

/// Why a JSON patch was not applied; the two map to different HTTP answers.
#[derive(Debug)]
pub(crate) enum PatchError {
    /// The patch document itself is malformed (400 BadRequest).
    Malformed(String),
    /// A well-formed operation could not be applied, e.g. a failed `test` (422 Invalid).
    Failed(String),
}

/// Applies an RFC 7386 merge patch in place: objects merge, `null` deletes, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// One parsed RFC 6902 operation.
enum Op {
    Add(Vec<String>, Value),
    Remove(Vec<String>),
    Replace(Vec<String>, Value),
    Move(Vec<String>, Vec<String>),
    Copy(Vec<String>, Vec<String>),
    Test(Vec<String>, Value),
}

/// Applies an RFC 6902 JSON patch atomically: either every operation applies or `doc` is untouched.
pub(crate) fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = parse_ops(patch)?;
    let mut work = doc.clone();
    for op in ops {
        apply_op(&mut work, op).map_err(PatchError::Failed)?;
    }
    *doc = work;
    Ok(())
}

fn parse_ops(patch: &Value) -> Result<Vec<Op>, PatchError> {
    let malformed = |m: &str| PatchError::Malformed(m.to_string());
    let list = patch
        .as_array()
        .ok_or_else(|| malformed("json patch must be an array of operations"))?;
    let mut ops = Vec::with_capacity(list.len());
    for raw in list {
        let op = raw
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("operation is missing \"op\""))?;
        let path = |field: &str| -> Result<Vec<String>, PatchError> {
            let text = raw.get(field).and_then(Value::as_str).ok_or_else(|| {
                PatchError::Malformed(format!("operation {op} is missing \"{field}\""))
            })?;
            parse_pointer(text).map_err(PatchError::Malformed)
        };
        let value = || -> Result<Value, PatchError> {
            raw.get("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("operation {op} is missing \"value\""))
            })
        };
        ops.push(match op {
            "add" => Op::Add(path("path")?, value()?),
            "remove" => Op::Remove(path("path")?),
            "replace" => Op::Replace(path("path")?, value()?),
            "move" => Op::Move(path("from")?, path("path")?),
            "copy" => Op::Copy(path("from")?, path("path")?),
            "test" => Op::Test(path("path")?, value()?),
            other => {
                return Err(PatchError::Malformed(format!(
                    "unexpected operation {other:?}"
                )));
            }
        });
    }
    Ok(ops)
}

/// Splits an RFC 6901 pointer into unescaped reference tokens.
pub(crate) fn parse_pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("json pointer {text:?} must start with '/'"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn show(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Parses an array index token: no sign, no leading zeros.
fn index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |node, token| match node {
        Value::Object(map) => map.get(token),
        Value::Array(items) => index(token).and_then(|i| items.get(i)),
        _ => None,
    })
}

fn get_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(doc, |node, token| match node {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => index(token).and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent_path)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    let parent = get_mut(doc, parent_path).ok_or_else(|| {
        format!(
            "add operation does not apply: doc is missing path: {}",
            show(path)
        )
    })?;
    match parent {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) if last == "-" => {
            items.push(value);
            Ok(())
        }
        Value::Array(items) => match index(last) {
            Some(i) if i <= items.len() => {
                items.insert(i, value);
                Ok(())
            }
            _ => Err(format!(
                "add operation does not apply: index out of bounds: {}",
                show(path)
            )),
        },
        _ => Err(format!(
            "add operation does not apply: doc is missing path: {}",
            show(path)
        )),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let missing = || {
        format!(
            "remove operation does not apply: doc is missing path: {}",
            show(path)
        )
    };
    let (last, parent_path) = path.split_last().ok_or_else(missing)?;
    match get_mut(doc, parent_path).ok_or_else(missing)? {
        Value::Object(map) => map.remove(last).ok_or_else(missing),
        Value::Array(items) => match index(last) {
            Some(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

fn apply_op(doc: &mut Value, op: Op) -> Result<(), String> {
    match op {
        Op::Add(path, value) => add(doc, &path, value),
        Op::Remove(path) => remove(doc, &path).map(drop),
        Op::Replace(path, value) => {
            let slot = get_mut(doc, &path).ok_or_else(|| {
                format!(
                    "replace operation does not apply: doc is missing key: {}",
                    show(&path)
                )
            })?;
            *slot = value;
            Ok(())
        }
        Op::Move(from, path) => {
            if path.len() > from.len() && path.starts_with(&from) {
                return Err(format!(
                    "move operation cannot move {} into its own child",
                    show(&from)
                ));
            }
            let value = remove(doc, &from)?;
            add(doc, &path, value)
        }
        Op::Copy(from, path) => {
            let value = get(doc, &from).cloned().ok_or_else(|| {
                format!(
                    "copy operation does not apply: doc is missing from path: {}",
                    show(&from)
                )
            })?;
            add(doc, &path, value)
        }
        Op::Test(path, expected) => {
            let failed = || format!("testing value {} failed: test failed", show(&path));
            match get(doc, &path) {
                Some(actual) if *actual == expected => Ok(()),
                Some(_) => Err(failed()),
                // The API server treats a missing member as equal to `null`, as long as its
                // parent exists; kube's finalizer helper relies on that.
                None => {
                    let parent_exists = path
                        .split_last()
                        .is_some_and(|(_, parent)| get(doc, parent).is_some());
                    if expected.is_null() && parent_exists {
                        Ok(())
                    } else {
                        Err(failed())
                    }
                }
            }
        }
    }
}
