//! The built-in runners: `core.noop`, `core.local` (a shell command with a timeout) and
//! `core.http` (one HTTP request). Each returns whether it succeeded and a StackStorm-shaped
//! result; neither logs parameters (they may hold decrypted secrets).

use std::time::Duration;

use serde_json::{json, Map, Value};

/// The longest timeout a run may ask for.
pub const MAX_TIMEOUT_MS: i64 = 3_600_000;
const DEFAULT_TIMEOUT_S: u64 = 60;
/// Output kept per stream.
const MAX_OUTPUT: usize = 1 << 20;

/// How long a run with these (possibly masked) parameters may take, in milliseconds.
pub fn timeout_ms(params: &Value) -> i64 {
    params
        .as_object()
        .and_then(|p| timeout_of(p).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(MAX_TIMEOUT_MS)
}

fn timeout_of(params: &Map<String, Value>) -> Result<Duration, String> {
    match params.get("timeout") {
        None | Some(Value::Null) => Ok(Duration::from_secs(DEFAULT_TIMEOUT_S)),
        Some(v) => {
            let secs = v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|s| *s > 0.0 && *s * 1000.0 <= MAX_TIMEOUT_MS as f64)
                .ok_or_else(|| {
                    format!("timeout: must be a number of seconds between 0 and {}", MAX_TIMEOUT_MS / 1000)
                })?;
            Ok(Duration::from_secs_f64(secs))
        }
    }
}

fn text(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_OUTPUT)];
    String::from_utf8_lossy(cut).into_owned()
}

/// Run `action` with `params` (plaintext). `(succeeded, result)`.
pub async fn run(action: &str, params: &Map<String, Value>) -> (bool, Value) {
    let r = match action {
        "core.noop" => Ok((true, json!({}))),
        "core.local" => local(params).await,
        "core.http" => http(params).await,
        other => Err(format!("no built-in runner for action \"{other}\"")),
    };
    r.unwrap_or_else(|e| (false, json!({"error": e})))
}

/// `core.local`: `cmd` through `sh -c`, optional `cwd`, `env` (object) and `timeout` (s).
async fn local(params: &Map<String, Value>) -> Result<(bool, Value), String> {
    let cmd = params
        .get("cmd")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .ok_or("cmd: required (the shell command to run)")?;
    let timeout = timeout_of(params)?;
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c").arg(cmd).stdin(std::process::Stdio::null()).kill_on_drop(true);
    if let Some(cwd) = params.get("cwd").and_then(Value::as_str) {
        c.current_dir(cwd);
    }
    if let Some(env) = params.get("env").and_then(Value::as_object) {
        for (k, v) in env {
            c.env(k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
        }
    }
    let child = c.output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => Ok((
            false,
            json!({"error": format!("timed out after {:.0} s", timeout.as_secs_f64()), "return_code": -9,
                   "stdout": "", "stderr": "", "succeeded": false, "failed": true}),
        )),
        Ok(Err(e)) => Err(format!("cannot start the command: {e}")),
        Ok(Ok(out)) => {
            let code = out.status.code().unwrap_or(-1);
            let ok = out.status.success();
            Ok((
                ok,
                json!({"return_code": code, "stdout": text(&out.stdout), "stderr": text(&out.stderr),
                       "succeeded": ok, "failed": !ok}),
            ))
        }
    }
}

/// `core.http`: `url` (required), `method` (GET), `headers` (object), `body` (string or JSON),
/// `timeout` (s). Fails on transport errors and on 4xx/5xx answers.
async fn http(params: &Map<String, Value>) -> Result<(bool, Value), String> {
    let url = params.get("url").and_then(Value::as_str).ok_or("url: required")?;
    let method = params.get("method").and_then(Value::as_str).unwrap_or("GET").to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("method: \"{method}\" is not valid"))?;
    let client = reqwest::Client::builder()
        .timeout(timeout_of(params)?)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut req = client.request(method, url);
    if let Some(h) = params.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            req = req.header(k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
        }
    }
    match params.get("body") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req = req.body(s.clone()),
        Some(other) => req = req.json(other),
    }
    let resp = req.send().await.map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let mut headers = Map::new();
    for (k, v) in resp.headers() {
        if let Ok(v) = v.to_str() {
            headers.insert(k.to_string(), json!(v));
        }
    }
    let bytes = resp.bytes().await.map_err(|e| format!("reading the answer failed: {e}"))?;
    let body = serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|_| json!(text(&bytes)));
    let ok = !(status.is_client_error() || status.is_server_error());
    Ok((ok, json!({"status_code": status.as_u16(), "body": body, "headers": headers})))
}
