//! Rendering results the way `st2` prints them (`../shared/st2-contract.md` §4.5).
//!
//! A result is first reduced to a *document*: the selected attributes that are present, keyed by
//! name in a `BTreeMap` so keys come out sorted whatever serde_json's features are. JSON is then
//! printed with an indent of 4 (Python's `json.dumps(docs, indent=4, sort_keys=True)`), YAML with
//! serde_yaml, and tables with comfy-table in st2's `+---+` style.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use comfy_table::{ContentArrangement, Table};
use serde::Serialize;
use serde_json::Value;
use st2kv_api::KeyValuePair;

/// How the user asked to see results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Attributes of `key get` (st2's, plus `user` for user-scoped keys).
pub const GET_ATTRS: &[&str] = &["name", "value", "secret", "encrypted", "scope", "user", "expire_timestamp"];
/// Attributes of `key list`.
pub const LIST_ATTRS: &[&str] =
    &["name", "value", "secret", "encrypted", "scope", "user", "expire_timestamp"];
/// Attributes of `key set` (st2's, plus `user` for user-scoped keys).
pub const SET_ATTRS: &[&str] = &["name", "value", "scope", "user", "expire_timestamp"];

/// What table mode prints for an empty list (st2's words).
pub const NO_ITEMS: &str = "No matching items found";

/// Attributes holding a timestamp, which tables show as st2 does ([`human_time`]).
pub const TIME_ATTRS: &[&str] = &["expire_timestamp", "expiry", "created_at", "token_expire"];

/// A resource as a document: its attributes by name, sorted.
pub type Doc = BTreeMap<String, Value>;

/// `v` with the keys of every object, however deep, in sorted order (a no-op unless serde_json
/// keeps insertion order, which another crate's features may ask for).
fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sort_keys(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Any resource of the API (a struct serializing to a JSON object) as a [`Doc`].
pub fn to_doc(resource: &impl Serialize) -> Doc {
    match serde_json::to_value(resource).map(sort_keys) {
        Ok(Value::Object(m)) => m.into_iter().collect(),
        _ => Doc::new(),
    }
}

/// Only the `attrs` of `doc`.
pub fn select(doc: Doc, attrs: &[&str]) -> Doc {
    doc.into_iter().filter(|(k, _)| attrs.contains(&k.as_str())).collect()
}

/// One resource: a property/value table of the `attrs` it has, in that order, or the whole
/// document as JSON/YAML.
pub fn render_object(doc: &Doc, attrs: &[&str], fmt: Format) -> String {
    match fmt {
        Format::Json => to_json(doc),
        Format::Yaml => to_yaml(doc),
        Format::Table => {
            let mut t = new_table();
            t.set_header(vec!["Property", "Value"]);
            for a in attrs {
                if let Some(v) = doc.get(*a) {
                    t.add_row(vec![a.to_string(), cell(a, Some(v))]);
                }
            }
            t.to_string()
        }
    }
}

/// One attribute of a key, or `None` if the key does not have it.
fn attr(kv: &KeyValuePair, name: &str) -> Option<Value> {
    let s = |v: &Option<String>| v.clone().map(Value::String);
    match name {
        "id" => s(&kv.id),
        "uid" => s(&kv.uid),
        "name" => Some(Value::String(kv.name.clone())),
        "value" => Some(Value::String(kv.value.clone())),
        "secret" => Some(Value::Bool(kv.secret)),
        "encrypted" => Some(Value::Bool(kv.encrypted)),
        "scope" => s(&kv.scope),
        "user" => s(&kv.user),
        "expire_timestamp" => s(&kv.expire_timestamp),
        "description" => s(&kv.description),
        _ => None,
    }
}

/// The selected attributes of `kv` that are present, sorted by name.
pub fn document(kv: &KeyValuePair, attrs: &[&'static str]) -> BTreeMap<&'static str, Value> {
    attrs.iter().filter_map(|a| attr(kv, a).map(|v| (*a, v))).collect()
}

/// `json.dumps(doc, indent=4, sort_keys=True)`; the caller sorts keys by using `BTreeMap`s.
/// Non-ASCII text is printed as UTF-8 rather than `\u` escapes; JSON readers see no difference.
pub fn to_json(doc: &impl Serialize) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b"    "),
    );
    match doc.serialize(&mut ser) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        // Documents are maps of strings and JSON values: serializing them cannot fail.
        Err(e) => format!("\"<unprintable: {e}>\""),
    }
}

/// The document as YAML (block style, keys sorted by the caller's `BTreeMap`s).
pub fn to_yaml(doc: &impl Serialize) -> String {
    let s = serde_yaml::to_string(doc).unwrap_or_else(|e| format!("<unprintable: {e}>\n"));
    s.trim_end_matches('\n').to_string()
}

/// An empty table in st2's look (PrettyTable's default): `+` at every crossing, `-` for the
/// frame and the rule under the header, no rules between rows. Wraps to the terminal's width
/// when stdout is one.
pub fn new_table() -> Table {
    let mut t = Table::new();
    // The 19 components of comfy-table's preset, in its order: left/right/top/bottom borders,
    // header rule (left, line, middle, right), vertical line, row rule (line, middle, left and
    // right ends: none), top/bottom border crossings, the four corners.
    t.load_preset("||--+-++|    ++++++");
    t.set_content_arrangement(ContentArrangement::Dynamic);
    t
}

/// A cell's text: strings as-is, booleans as st2 (Python) prints them.
fn cell(attr: &str, v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::Bool(b)) => if *b { "True" } else { "False" }.to_string(),
        Some(Value::String(s)) if TIME_ATTRS.contains(&attr) => human_time(s),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// st2's table rendering of a timestamp (`format_isodate_for_user_timezone` with the default UTC
/// timezone): `2026-12-04T15:28:25.697414Z` → `Fri, 04 Dec 2026 15:28:25 UTC`. Anything that does
/// not parse is shown unchanged.
pub fn human_time(iso: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(iso) {
        Ok(t) => t.with_timezone(&chrono::Utc).format("%a, %d %b %Y %H:%M:%S UTC").to_string(),
        Err(_) => iso.to_string(),
    }
}

/// One key: a property/value table, or a JSON/YAML document of `attrs`. `table_extra` attributes
/// are shown only in the table (for people), not in JSON/YAML (for scripts, which get exactly
/// st2's attributes).
pub fn render_key(
    kv: &KeyValuePair,
    attrs: &[&'static str],
    table_extra: &[&'static str],
    fmt: Format,
) -> String {
    match fmt {
        Format::Json => to_json(&document(kv, attrs)),
        Format::Yaml => to_yaml(&document(kv, attrs)),
        Format::Table => {
            let mut t = new_table();
            t.set_header(vec!["Property", "Value"]);
            for a in attrs.iter().chain(table_extra) {
                if let Some(v) = attr(kv, a) {
                    t.add_row(vec![a.to_string(), cell(a, Some(&v))]);
                }
            }
            t.to_string()
        }
    }
}

/// Many keys, in the order given: a table with one column per attribute, or a JSON/YAML list.
pub fn render_keys(kvs: &[KeyValuePair], attrs: &[&'static str], fmt: Format) -> String {
    let docs: Vec<_> = kvs.iter().map(|kv| document(kv, attrs)).collect();
    render_rows(&docs, attrs, fmt)
}

/// A list of documents: JSON/YAML as they are, or a table with `columns` (st2 prints
/// `No matching items found` instead of an empty table).
pub fn render_rows<K>(docs: &[BTreeMap<K, Value>], columns: &[&str], fmt: Format) -> String
where
    K: Borrow<str> + Ord + Serialize,
{
    match fmt {
        Format::Json => to_json(&docs),
        Format::Yaml => to_yaml(&docs),
        Format::Table if docs.is_empty() => NO_ITEMS.to_string(),
        Format::Table => {
            let mut t = new_table();
            t.set_header(columns.to_vec());
            for d in docs {
                t.add_row(columns.iter().map(|c| cell(c, d.get(*c))).collect::<Vec<_>>());
            }
            t.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(name: &str, value: &str) -> KeyValuePair {
        KeyValuePair {
            id: Some("64b0c0ffee".into()),
            uid: Some(format!("key_value_pair:st2kv.system:{name}")),
            name: name.into(),
            value: value.into(),
            secret: false,
            encrypted: false,
            scope: Some("st2kv.system".into()),
            user: None,
            expire_timestamp: None,
            description: Some("about".into()),
        }
    }

    fn user_kv() -> KeyValuePair {
        KeyValuePair {
            scope: Some("st2kv.user".into()),
            user: Some("st2admin".into()),
            expire_timestamp: Some("2026-12-04T15:28:25.697414Z".into()),
            ..kv("ukey", "uval")
        }
    }

    #[test]
    fn get_json_selects_st2_attributes_sorted_with_indent_4() {
        let out = render_key(&kv("foo", "bar"), GET_ATTRS, &["description"], Format::Json);
        assert_eq!(
            out,
            "{\n    \"encrypted\": false,\n    \"name\": \"foo\",\n    \"scope\": \"st2kv.system\",\n    \
             \"secret\": false,\n    \"value\": \"bar\"\n}"
        );
    }

    #[test]
    fn get_json_includes_user_and_expiry_when_present() {
        let out = render_key(&user_kv(), GET_ATTRS, &[], Format::Json);
        let v: Value = serde_json::from_str(&out).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["encrypted", "expire_timestamp", "name", "scope", "secret", "user", "value"]);
        // Sorted in the text itself, not just after parsing.
        let pos = |k: &str| out.find(&format!("\"{k}\"")).unwrap();
        assert!(pos("encrypted") < pos("expire_timestamp") && pos("user") < pos("value"));
    }

    #[test]
    fn list_json_keeps_server_order_and_prints_brackets_when_empty() {
        let out = render_keys(&[kv("b", "2"), user_kv(), kv("a", "1")], LIST_ATTRS, Format::Json);
        let v: Vec<BTreeMap<String, Value>> = serde_json::from_str(&out).unwrap();
        let names: Vec<_> = v.iter().map(|d| d["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["b", "ukey", "a"]);
        assert!(!v[0].contains_key("user") && !v[0].contains_key("id") && !v[0].contains_key("description"));
        assert_eq!(v[1]["user"], "st2admin");
        assert!(
            out.starts_with("[\n    {\n        \"encrypted\": false,\n        \"name\": \"b\","),
            "{out}"
        );
        assert_eq!(render_keys(&[], LIST_ATTRS, Format::Json), "[]");
    }

    #[test]
    fn yaml_is_sorted_and_parses_back() {
        let out = render_key(&user_kv(), GET_ATTRS, &[], Format::Yaml);
        assert!(out.starts_with("encrypted: false\nexpire_timestamp:"), "{out}");
        let back: BTreeMap<String, serde_yaml::Value> = serde_yaml::from_str(&out).unwrap();
        assert_eq!(back["user"], serde_yaml::Value::String("st2admin".into()));
        let list = render_keys(&[kv("a", "1"), kv("b", "2")], LIST_ATTRS, Format::Yaml);
        let back: Vec<BTreeMap<String, serde_yaml::Value>> = serde_yaml::from_str(&list).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(render_keys(&[], LIST_ATTRS, Format::Yaml), "[]");
    }

    #[test]
    fn set_output_has_name_value_scope() {
        let out = render_key(&kv("k", "v"), SET_ATTRS, &[], Format::Json);
        let v: BTreeMap<String, Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(v.keys().collect::<Vec<_>>(), ["name", "scope", "value"]);
    }

    #[test]
    fn tables_look_like_st2s() {
        let out = render_keys(&[kv("foo", "bar"), user_kv()], LIST_ATTRS, Format::Table);
        let lines: Vec<_> = out.lines().collect();
        assert!(lines[0].starts_with("+-") && lines[0].ends_with("-+"), "{out}");
        assert!(
            lines[1].starts_with("| name ")
                && lines[1].trim_end().ends_with("|")
                && lines[1].contains("| expire_timestamp "),
            "{out}"
        );
        assert_eq!(lines[2], lines[0], "{out}");
        assert!(lines[3].contains("| foo ") && lines[3].contains("| False "), "{out}");
        assert!(lines[4].starts_with("| ukey ") && lines[5] == lines[0] && lines.len() == 6, "{out}");
        assert!(out.contains("Fri, 04 Dec 2026 15:28:25 UTC"), "{out}");
        assert_eq!(render_keys(&[], LIST_ATTRS, Format::Table), NO_ITEMS);

        let one = render_key(&kv("foo", "bar"), GET_ATTRS, &["description"], Format::Table);
        assert!(
            one.contains("| Property ") && one.contains("| description ") && one.contains("| about "),
            "{one}"
        );
        assert!(!one.contains("| user "), "{one}");
    }

    #[test]
    fn resources_render_as_property_tables_or_whole_documents() {
        let key = st2kv_api::ApiKey {
            id: "k1".into(),
            uid: Some("********".into()),
            user: "bob".into(),
            key_hash: None,
            key: Some("SECRET".into()),
            metadata: serde_json::from_str(r#"{"z": 1, "a": "x"}"#).unwrap(),
            created_at: Some("2026-01-02T03:04:05.000000Z".into()),
            enabled: true,
        };
        let doc = to_doc(&key);
        let json = render_object(&doc, &["id"], Format::Json);
        assert!(
            json.starts_with(
                "{\n    \"created_at\": \"2026-01-02T03:04:05.000000Z\",\n    \"enabled\": true,"
            ),
            "{json}"
        );
        assert!(json.contains("\"metadata\": {\n        \"a\": \"x\",\n        \"z\": 1\n    }"), "{json}");
        assert!(!json.contains("key_hash"), "{json}");
        let table = render_object(&doc, &["id", "key", "metadata", "created_at", "key_hash"], Format::Table);
        let rows: Vec<_> = table.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 5, "{table}");
        assert!(rows[1].starts_with("| id ") && rows[2].starts_with("| key "), "{table}");
        assert!(table.contains(r#"{"a":"x","z":1}"#), "{table}");
        assert!(table.contains("Fri, 02 Jan 2026 03:04:05 UTC"), "{table}");
        assert_eq!(select(doc, &["id", "user"]).keys().collect::<Vec<_>>(), ["id", "user"]);

        let users = [Doc::from([
            ("name".to_string(), Value::from("bob")),
            ("role".to_string(), Value::from("user")),
        ])];
        let table = render_rows(&users, &["name", "role", "enabled"], Format::Table);
        assert!(table.contains("| bob ") && table.contains("| enabled "), "{table}");
        assert_eq!(render_rows(&[] as &[Doc], &["name"], Format::Table), NO_ITEMS);
    }

    #[test]
    fn odd_timestamps_are_shown_as_they_are() {
        assert_eq!(human_time("2026-01-02T03:04:05Z"), "Fri, 02 Jan 2026 03:04:05 UTC");
        assert_eq!(human_time("soon"), "soon");
    }
}
