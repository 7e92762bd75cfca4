//! `st2kv rule ...`, `st2kv execution ...` and `st2kv render FILE`.

use std::path::Path;

use serde_json::{json, Value};

use crate::args::{ExecutionCommand, RenderArgs, RuleCommand};
use crate::commands::{Context, Outcome};
use crate::output::{new_table, to_json, to_yaml, Format};

/// Read FILE (`-`: standard input).
fn read(path: &Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// FILE as a JSON value (JSON or YAML text).
fn read_doc(path: &Path) -> Result<Value, String> {
    let text = read(path)?;
    serde_yaml::from_str::<Value>(&text).map_err(|e| format!("{}: not JSON or YAML: {e}", path.display()))
}

fn show(doc: &Value, fmt: Format, table: impl FnOnce(&Value) -> String) -> String {
    match fmt {
        Format::Json => to_json(doc),
        Format::Yaml => to_yaml(doc),
        Format::Table => table(doc),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One resource as a two-column property table.
fn properties(doc: &Value) -> String {
    let mut t = new_table();
    t.set_header(vec!["Property", "Value"]);
    if let Some(obj) = doc.as_object() {
        for (k, v) in obj {
            t.add_row(vec![k.clone(), cell(v)]);
        }
    }
    format!("{t}\n")
}

fn rule_rows(rules: &Value) -> String {
    let mut t = new_table();
    t.set_header(vec!["ref", "enabled", "trigger", "action", "description"]);
    for r in rules.as_array().into_iter().flatten() {
        let trigger = r["trigger"]["type"].as_str().or(r["trigger"]["name"].as_str()).unwrap_or("");
        let action = r["action"]["ref"].as_str().or(r["action"]["name"].as_str()).unwrap_or("");
        t.add_row(vec![
            cell(&r["ref"]),
            cell(&r["enabled"]),
            trigger.into(),
            action.into(),
            cell(&r["description"]),
        ]);
    }
    format!("{t}\n")
}

pub async fn rule(cmd: RuleCommand, cx: &Context<'_>) -> Outcome {
    let fmt = cx.format;
    let result = match cmd {
        RuleCommand::Create { file } => match read_doc(&file) {
            Ok(doc) => cx.client.create_rule(&doc).await.map(|r| show(&r, fmt, properties)),
            Err(e) => return Outcome::fail(e),
        },
        RuleCommand::List => cx.client.list_rules().await.map(|r| show(&Value::Array(r), fmt, rule_rows)),
        RuleCommand::Get { r#ref } => cx.client.get_rule(&r#ref).await.map(|r| show(&r, fmt, properties)),
        RuleCommand::Update { r#ref, file } => match read_doc(&file) {
            Ok(doc) => cx.client.update_rule(&r#ref, &doc).await.map(|r| show(&r, fmt, properties)),
            Err(e) => return Outcome::fail(e),
        },
        RuleCommand::Delete { r#ref } => cx
            .client
            .delete_rule(&r#ref)
            .await
            .map(|()| format!("Resource with id \"{}\" has been successfully deleted.\n", r#ref)),
        RuleCommand::Enable { r#ref } => {
            cx.client.set_rule_enabled(&r#ref, true).await.map(|r| show(&r, fmt, properties))
        }
        RuleCommand::Disable { r#ref } => {
            cx.client.set_rule_enabled(&r#ref, false).await.map(|r| show(&r, fmt, properties))
        }
    };
    match result {
        Ok(out) => Outcome::ok(out),
        Err(e) => Outcome::fail(cx.describe(&e)),
    }
}

fn execution_rows(list: &Value) -> String {
    let mut t = new_table();
    t.set_header(vec!["id", "rule", "action", "status", "start_timestamp", "end_timestamp"]);
    for e in list.as_array().into_iter().flatten() {
        t.add_row(vec![
            cell(&e["id"]),
            cell(&e["rule"]["ref"]),
            cell(&e["action"]["ref"]),
            cell(&e["status"]),
            cell(&e["start_timestamp"]),
            cell(&e["end_timestamp"]),
        ]);
    }
    format!("{t}\n")
}

pub async fn execution(cmd: ExecutionCommand, cx: &Context<'_>) -> Outcome {
    let fmt = cx.format;
    let result = match cmd {
        ExecutionCommand::List { rule, status, last } => {
            let mut q = vec![("limit", last.to_string())];
            if let Some(r) = rule {
                q.push(("rule", r));
            }
            if let Some(s) = status {
                q.push(("status", s));
            }
            cx.client.list_executions(&q).await.map(|l| show(&Value::Array(l), fmt, execution_rows))
        }
        ExecutionCommand::Get { id } => cx.client.get_execution(&id).await.map(|e| show(&e, fmt, properties)),
    };
    match result {
        Ok(out) => Outcome::ok(out),
        Err(e) => Outcome::fail(cx.describe(&e)),
    }
}

/// Build the render request for FILE's content: a rule, an object, or one template.
fn render_request(text: &str) -> Value {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Object(o)) if o.contains_key("trigger") && o.contains_key("action") => {
            json!({"rule": Value::Object(o)})
        }
        Ok(v @ (Value::Object(_) | Value::Array(_))) => json!({"object": v}),
        _ => json!({"template": text.strip_suffix('\n').unwrap_or(text)}),
    }
}

pub async fn render(args: RenderArgs, cx: &Context<'_>) -> Outcome {
    let text = match read(&args.file) {
        Ok(t) => t,
        Err(e) => return Outcome::fail(e),
    };
    let mut req = render_request(&text);
    if let Some(u) = args.user {
        req["user"] = json!(u);
    }
    if let Some(t) = args.trigger {
        match serde_json::from_str::<Value>(&t) {
            Ok(v) => req["trigger"] = v,
            Err(e) => return Outcome::fail(format!("--trigger: not JSON: {e}")),
        }
    }
    let answer = match cx.client.render(&req).await {
        Ok(a) => a,
        Err(e) => return Outcome::fail(cx.describe(&e)),
    };
    let mut problems = Vec::new();
    for (field, label) in [("missing", "missing key"), ("denied", "may not decrypt"), ("errors", "error")] {
        for p in answer[field].as_array().into_iter().flatten() {
            problems.push(format!("{label}: {}", cell(p)));
        }
    }
    let stdout = match cx.format {
        Format::Json => to_json(&answer),
        Format::Yaml => to_yaml(&answer),
        Format::Table => match &answer["result"] {
            Value::String(s) => format!("{s}\n"),
            other => to_json(other),
        },
    };
    if problems.is_empty() {
        Outcome::ok(stdout)
    } else {
        let n = problems.len();
        let mut o = Outcome::fail(format!(
            "{n} problem{} rendering {}:\n  {}",
            if n == 1 { "" } else { "s" },
            args.file.display(),
            problems.join("\n  ")
        ));
        o.stdout = stdout;
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_a_rule_an_object_or_a_template() {
        let rule = render_request("name: r\ntrigger: {type: core.st2.webhook}\naction: {ref: core.noop}\n");
        assert_eq!(rule["rule"]["name"], "r");
        let obj = render_request("{\"a\": \"{{ st2kv.system.x }}\"}");
        assert_eq!(obj["object"]["a"], "{{ st2kv.system.x }}");
        let tpl = render_request("endpoint is {{ st2kv.system.x }}\n");
        assert_eq!(tpl["template"], "endpoint is {{ st2kv.system.x }}");
    }
}
