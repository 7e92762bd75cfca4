//! Reading the file of `key load` and turning each item into a PUT body, as st2client's
//! `KeyValuePairLoadCommand` does (`../shared/st2-contract.md` §4.6), except that a bad item is
//! reported and skipped instead of aborting the whole load.
//!
//! Both JSON and YAML are read into `serde_yaml::Value`, which keeps mappings in file order, so a
//! value converted with `-c` reads like the file (and like Python's `json.dumps`, key order kept).

use std::path::Path;

use serde_yaml::Value;
use st2kv_api::KeyValuePairRequest;

use crate::args::DEFAULT_SCOPE;

/// The syntax of a load file, chosen by its extension as st2 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Json,
    Yaml,
}

impl FileKind {
    /// `.json` → JSON, `.yaml`/`.yml` → YAML (any case); anything else is refused like st2 does.
    pub fn of(path: &Path) -> Result<FileKind, String> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "json" => Ok(FileKind::Json),
            "yaml" | "yml" => Ok(FileKind::Yaml),
            _ => Err(format!(
                "unsupported file type of {}: expected a .json, .yaml or .yml file",
                path.display()
            )),
        }
    }
}

/// One item of the file, ready to send or already known to be bad.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The name to report: the item's `name`, or `#N` (its 1-based position) if it has none.
    pub label: String,
    /// The scope asked for (default `system`), for the report.
    pub scope: String,
    /// The user asked for, for the report.
    pub user: Option<String>,
    /// The PUT body, or why the item cannot be loaded.
    pub request: Result<KeyValuePairRequest, String>,
}

/// Read and parse `path` into its items (not yet validated).
pub fn read_items(path: &Path) -> Result<Vec<Value>, String> {
    let kind = FileKind::of(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_items(&text, kind).map_err(|e| format!("cannot load {}: {e}", path.display()))
}

/// Parse a file's text: a list of items, a single item (a mapping), or nothing at all.
pub fn parse_items(text: &str, kind: FileKind) -> Result<Vec<Value>, String> {
    let doc: Value = match kind {
        FileKind::Json => serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?,
        FileKind::Yaml => serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?,
    };
    match doc {
        Value::Sequence(items) => Ok(items),
        Value::Mapping(_) => Ok(vec![doc]),
        Value::Null => Ok(Vec::new()),
        _ => Err("expected a list of items or a single item (a mapping with name and value)".to_string()),
    }
}

/// How a scalar reads in a message.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_else(|_| "?".into()),
    }
}

/// Python's truthiness, which decides whether st2 sends an optional field.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

/// Validate item number `index` (0-based) and build its PUT body.
pub fn to_item(v: &Value, index: usize, convert: bool) -> Item {
    let position = format!("#{}", index + 1);
    let Value::Mapping(m) = v else {
        return Item {
            label: position.clone(),
            scope: DEFAULT_SCOPE.into(),
            user: None,
            request: Err(format!("Item {position} is not a mapping with name and value")),
        };
    };
    let field = |k: &str| m.get(k).filter(|v| !v.is_null());
    let label = match field("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) if !matches!(other, Value::String(_)) => show(other),
        _ => position.clone(),
    };
    let scope = match field("scope") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => DEFAULT_SCOPE.to_string(),
    };
    let user = match field("user") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let request = build(m, &label, &position, &scope, &user, convert);
    Item { label, scope, user, request }
}

fn build(
    m: &serde_yaml::Mapping,
    label: &str,
    position: &str,
    scope: &str,
    user: &Option<String>,
    convert: bool,
) -> Result<KeyValuePairRequest, String> {
    let field = |k: &str| m.get(k).filter(|v| !v.is_null());
    let name = match field("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::String(_)) => return Err(format!("Item {position} has no name")),
        Some(_) => return Err(format!("Item {position} has a name that is not a string")),
    };
    // A null value is "not a string" too: st2 would store `null` with -c.
    let value = match m.get("value") {
        None => return Err(format!("Item '{label}' has no value")),
        Some(Value::String(s)) => s.clone(),
        Some(other) if convert => python_json(other).map_err(|e| format!("Item '{label}': {e}"))?,
        Some(_) => {
            return Err(format!(
                "Item '{label}' has a value that is not a string. Either pass in the -c/--convert option \
                 to convert non-string types to JSON strings automatically, or convert the data to a \
                 string in the file"
            ))
        }
    };
    if let Some(v) = field("scope").filter(|v| !matches!(v, Value::String(_))) {
        return Err(format!("Item '{label}' has a scope that is not a string: {}", show(v)));
    }
    if let Some(v) = field("user").filter(|v| !matches!(v, Value::String(_))) {
        return Err(format!("Item '{label}' has a user that is not a string: {}", show(v)));
    }
    let flag = |k: &str| match field(k) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(b.then_some(true)),
        Some(v) => Err(format!("Item '{label}' has a {k} that is not true or false: {}", show(v))),
    };
    let secret = flag("secret")?;
    let encrypted = flag("encrypted")?;
    let ttl = match field("ttl") {
        None => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().filter(|t| *t != 0),
        Some(v) => return Err(format!("Item '{label}' has a ttl that is not a whole number: {}", show(v))),
    };
    let description = match field("description") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
        Some(v) if truthy(v) => {
            return Err(format!("Item '{label}' has a description that is not a string: {}", show(v)))
        }
        Some(_) => None,
    };
    Ok(KeyValuePairRequest {
        name,
        value,
        scope: Some(scope.to_string()),
        user: user.clone(),
        secret,
        encrypted,
        ttl,
        description,
    })
}

/// `json.dumps(value)` as Python writes it: `", "` and `": "` separators, non-ASCII escaped as
/// `\u00e9`-style escapes, mapping order kept. This is what st2 stores with `--convert`, byte for byte for the
/// usual values (Python spells some floats differently, e.g. `1e+20`).
pub fn python_json(v: &Value) -> Result<String, String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    serde::Serialize::serialize(v, &mut ser).map_err(|e| format!("cannot convert the value to JSON: {e}"))?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// serde_json's compact formatter with Python's default separators and `ensure_ascii`.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str, kind: FileKind, convert: bool) -> Vec<Item> {
        parse_items(text, kind).unwrap().iter().enumerate().map(|(i, v)| to_item(v, i, convert)).collect()
    }

    fn ok(item: &Item) -> &KeyValuePairRequest {
        item.request.as_ref().unwrap_or_else(|e| panic!("{}: {e}", item.label))
    }

    #[test]
    fn file_kind_follows_the_extension() {
        assert_eq!(FileKind::of(Path::new("a.json")), Ok(FileKind::Json));
        assert_eq!(FileKind::of(Path::new("dir/a.YML")), Ok(FileKind::Yaml));
        assert_eq!(FileKind::of(Path::new("a.yaml")), Ok(FileKind::Yaml));
        assert!(FileKind::of(Path::new("a.txt")).unwrap_err().contains("unsupported file type"));
        assert!(FileKind::of(Path::new("json")).is_err());
    }

    #[test]
    fn json_list_of_items() {
        let got = items(
            r#"[{"name": "a", "value": "1"}, {"name": "b", "value": "2", "scope": "user", "user": "bob",
                "ttl": 60, "description": "d"}]"#,
            FileKind::Json,
            false,
        );
        assert_eq!(got.len(), 2);
        assert_eq!(
            ok(&got[0]),
            &KeyValuePairRequest { scope: Some("system".into()), ..KeyValuePairRequest::new("a", "1") }
        );
        assert_eq!(
            ok(&got[1]),
            &KeyValuePairRequest {
                scope: Some("user".into()),
                user: Some("bob".into()),
                ttl: Some(60),
                description: Some("d".into()),
                ..KeyValuePairRequest::new("b", "2")
            }
        );
        assert_eq!(
            (got[1].label.as_str(), got[1].scope.as_str(), got[1].user.as_deref()),
            ("b", "user", Some("bob"))
        );
    }

    #[test]
    fn a_single_object_is_one_item() {
        let got = items(r#"{"name": "solo", "value": "x"}"#, FileKind::Json, false);
        assert_eq!(got.len(), 1);
        assert_eq!(ok(&got[0]).name, "solo");
        assert_eq!(items("name: solo\nvalue: x\n", FileKind::Yaml, false), got);
    }

    #[test]
    fn yaml_list_of_items() {
        let got = items(
            "- name: a\n  value: '1'\n- name: b\n  value: two\n  secret: true\n  ttl: 0\n  user: ''\n",
            FileKind::Yaml,
            false,
        );
        assert_eq!(ok(&got[0]).value, "1");
        let b = ok(&got[1]);
        // Only truthy optional fields are sent, as st2 does.
        assert_eq!((b.secret, b.encrypted, b.ttl, b.user.as_deref()), (Some(true), None, None, None));
        assert!(items("", FileKind::Yaml, false).is_empty());
        assert!(items("[]", FileKind::Json, false).is_empty());
    }

    #[test]
    fn a_key_list_json_dump_loads_back() {
        // What `key list -j` prints; id/uid/expire_timestamp are ignored.
        let dump = r#"[
    {
        "encrypted": true,
        "expire_timestamp": "2026-12-04T15:28:25.697414Z",
        "name": "sec",
        "scope": "st2kv.system",
        "secret": true,
        "value": "30303030309F"
    },
    {
        "encrypted": false,
        "name": "ukey",
        "scope": "st2kv.user",
        "secret": false,
        "user": "st2admin",
        "value": "uval"
    }
]"#;
        let got = items(dump, FileKind::Json, false);
        let sec = serde_json::to_value(ok(&got[0])).unwrap();
        assert_eq!(
            sec,
            serde_json::json!({"name": "sec", "value": "30303030309F", "scope": "st2kv.system",
                               "encrypted": true, "secret": true})
        );
        let ukey = serde_json::to_value(ok(&got[1])).unwrap();
        assert_eq!(
            ukey,
            serde_json::json!({"name": "ukey", "value": "uval", "scope": "st2kv.user", "user": "st2admin"})
        );
    }

    #[test]
    fn non_string_values_need_convert() {
        let text = r#"[{"name": "obj", "value": {"x": 1, "a": [1, 2.5, "é"]}}, {"name": "n", "value": 5},
                       {"name": "b", "value": true}, {"name": "z", "value": null}]"#;
        let refused = items(text, FileKind::Json, false);
        let msg = refused[0].request.clone().unwrap_err();
        assert!(
            msg.starts_with(
                "Item 'obj' has a value that is not a string. Either pass in the -c/--convert option"
            ),
            "{msg}"
        );
        assert!(refused.iter().all(|i| i.request.is_err()));

        let converted = items(text, FileKind::Json, true);
        let values: Vec<_> = converted.iter().map(|i| ok(i).value.clone()).collect();
        assert_eq!(values, [r#"{"x": 1, "a": [1, 2.5, "\u00e9"]}"#, "5", "true", "null"]);
        // YAML mappings convert in file order as well.
        let y = items("name: m\nvalue:\n  b: 1\n  a: {c: x}\n", FileKind::Yaml, true);
        assert_eq!(ok(&y[0]).value, r#"{"b": 1, "a": {"c": "x"}}"#);
    }

    #[test]
    fn bad_items_are_reported_not_fatal() {
        let got = items(
            r#"[{"value": "no name"}, "just a string", {"name": "nv"}, {"name": 7, "value": "x"},
                {"name": "s", "value": "x", "secret": "yes"}, {"name": "t", "value": "x", "ttl": "soon"},
                {"name": "fine", "value": "x"}]"#,
            FileKind::Json,
            false,
        );
        let labels: Vec<_> = got.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(labels, ["#1", "#2", "nv", "7", "s", "t", "fine"]);
        assert_eq!(got[0].request, Err("Item #1 has no name".into()));
        assert_eq!(got[1].request, Err("Item #2 is not a mapping with name and value".into()));
        assert_eq!(got[2].request, Err("Item 'nv' has no value".into()));
        assert_eq!(got[3].request, Err("Item #4 has a name that is not a string".into()));
        assert!(got[4].request.clone().unwrap_err().contains("secret that is not true or false"));
        assert!(got[5].request.clone().unwrap_err().contains("ttl that is not a whole number"));
        assert!(got[6].request.is_ok());
    }

    #[test]
    fn unreadable_files_are_errors_not_panics() {
        assert!(parse_items("{not json", FileKind::Json).unwrap_err().starts_with("invalid JSON"));
        assert!(parse_items("a: [b", FileKind::Yaml).unwrap_err().starts_with("invalid YAML"));
        assert!(parse_items("\"hello\"", FileKind::Json).unwrap_err().contains("expected a list"));
        assert!(parse_items("42", FileKind::Yaml).is_err());
        let missing = read_items(Path::new("/nonexistent/keys.json")).unwrap_err();
        assert!(missing.starts_with("cannot read /nonexistent/keys.json"), "{missing}");
    }
}
