//! Bad input gets a clear 4xx with StackStorm's `{"faultstring": ...}` and changes nothing.

use std::time::Duration;

use serde_json::Value;
use st2kv_tests::{ClusterOptions, TestCluster};

/// One bad request: method, path (after the node URL), body, expected status and message start.
struct Case {
    method: &'static str,
    path: String,
    body: Option<String>,
    status: u16,
    message: String,
}

fn case(method: &'static str, path: &str, body: Option<&str>, status: u16, message: &str) -> Case {
    Case { method, path: path.into(), body: body.map(str::to_string), status, message: message.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_refused_with_its_status_and_message_and_changes_nothing() {
    let opts = ClusterOptions {
        node_args: ["--max-value-bytes", "1024", "--max-name-bytes", "64"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    let cluster = TestCluster::start_with(3, opts).await;
    let follower = cluster.follower().await;
    let http = cluster.http();
    // A key whose value must survive every bad request aimed at it.
    let seed = http
        .put(format!("{}/v1/keys/victim", cluster.url(1)))
        .body(r#"{"name":"victim","value":"intact"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(seed.status(), 200);
    let before = cluster.wait_converged(Duration::from_secs(10)).await;

    let long_name = "n".repeat(65);
    let big_value = format!(r#"{{"name":"victim","value":"{}"}}"#, "x".repeat(1025));
    let cases = vec![
        case("PUT", "/v1/keys/victim", Some(r#"{"name":"victim","value":"#), 400, "Failed to parse request body: "),
        case("PUT", "/v1/keys/victim", Some("not json"), 400, "Failed to parse request body: "),
        case("PUT", "/v1/keys/victim", Some(r#"["victim"]"#), 400, "['victim'] is not of type 'object'"),
        case("PUT", "/v1/keys/victim", Some(r#"{"name":"victim"}"#), 400, "'value' is a required property"),
        case("PUT", "/v1/keys/victim", Some(r#"{"value":"x"}"#), 400, "'name' is a required property"),
        case("PUT", "/v1/keys/victim", Some(r#"{"name":"victim","value":5}"#), 400, "5 is not of type 'string'"),
        case("PUT", "/v1/keys/victim", Some(r#"{"name":"victim","value":null}"#), 400, "None is not of type 'string'"),
        case(
            "PUT",
            "/v1/keys/victim",
            Some(r#"{"name":"victim","value":"x","scope":"galaxy"}"#),
            400,
            "Scope st2kv.galaxy is not in allowed scopes list: ['system', 'user', 'st2kv.system', 'st2kv.user'].",
        ),
        case("PUT", "/v1/keys/victim", Some(r#"{"name":"victim","value":"x","scope":"all"}"#), 400, "Scope all is not"),
        case("PUT", "/v1/keys/victim", Some(r#"{"name":"victim","value":"x","ttl":-5}"#), 400, "TTL must be a positive"),
        case("PUT", "/v1/keys/victim", Some(r#"{"name":"victim","value":"x","ttl":"soon"}"#), 400, "'soon' is not of type 'integer'"),
        case("PUT", "/v1/keys/victim", Some(r#"{"name":"victim","value":"x","secret":true}"#), 400, "Crypto key not found"),
        case("PUT", "/v1/keys/", Some(r#"{"name":"","value":"x"}"#), 400, "Key name must not be empty."),
        case("PUT", "/v1/keys", Some(r#"{"name":"","value":"x"}"#), 400, "Key name must not be empty."),
        case("PUT", "/v1/keys/a%2Fb", Some(r#"{"name":"a/b","value":"x"}"#), 400, "Key name \"a/b\" must not contain \"/\"."),
        case("PUT", "/v1/keys/a/b", Some(r#"{"name":"a/b","value":"x"}"#), 404, "The resource could not be found."),
        case("PUT", &format!("/v1/keys/{long_name}"), Some(r#"{"name":"n","value":"x"}"#), 413, "Key name is 65 bytes long"),
        case("PUT", "/v1/keys/victim", Some(&big_value), 413, "Value for key \"victim\" is 1025 bytes long"),
        case("GET", "/v1/keys?scope=galaxy", None, 400, "Invalid scope: st2kv.galaxy"),
        case("GET", "/v1/keys/victim?scope=galaxy", None, 400, "Scope st2kv.galaxy is not in allowed scopes"),
        case("GET", "/v1/keys?decrypt=perhaps", None, 400, "Parameter \"decrypt\" is not of type boolean"),
        case("GET", "/v1/keys?limit=ten", None, 400, "Parameter \"limit\" is not of type integer"),
        case("GET", "/v1/keys?limit=0", None, 400, "Limit, \"0\" specified, must be a positive number or -1"),
        case("GET", "/v1/keys?limit=-3", None, 400, "Limit, \"-3\" specified"),
        case("GET", "/v1/keys?offset=-1", None, 400, "Offset \"-1\" specified"),
        case("GET", "/v1/keys?consistency=eventual", None, 400, "Parameter \"consistency\" must be"),
        case("GET", "/v1/keys/nope", None, 404, "The key \"nope\" does not exist in the StackStorm datastore."),
        case("DELETE", "/v1/keys/nope", None, 404, "The key \"nope\" does not exist in the StackStorm datastore."),
        case("DELETE", "/v1/keys/victim?scope=galaxy", None, 400, "Scope st2kv.galaxy is not in allowed scopes"),
        case("POST", "/v1/keys/victim", Some("{}"), 405, "The method is not allowed"),
        case("GET", "/v1/no-such-thing", None, 404, "The resource could not be found."),
    ];

    for node in [1, follower] {
        for c in &cases {
            let url = format!("{}{}", cluster.url(node), c.path);
            let mut rb = http.request(c.method.parse().unwrap(), &url);
            if let Some(b) = &c.body {
                rb = rb.body(b.clone());
            }
            let resp = rb.send().await.unwrap();
            let status = resp.status().as_u16();
            let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(status, c.status, "{} {} -> {body}", c.method, c.path);
            assert_eq!(ctype.as_deref(), Some("application/json"), "{} {}", c.method, c.path);
            let fault = body["faultstring"].as_str().unwrap_or_else(|| panic!("no faultstring: {body}"));
            assert!(
                fault.starts_with(&c.message),
                "{} {}: {fault:?} should start with {:?}",
                c.method,
                c.path,
                c.message
            );
        }
    }

    let after = cluster.wait_converged(Duration::from_secs(10)).await;
    // A delete of a missing key is a real (replicated) no-op: it must be ordered with other
    // writes to answer 404 truthfully. Nothing else may reach the log.
    let deletes_of_missing =
        cases.iter().filter(|c| c.method == "DELETE" && c.status == 404).count() as u64 * 2;
    assert_eq!(
        before[0]["ops_applied"].as_u64().unwrap() + deletes_of_missing,
        after[0]["ops_applied"].as_u64().unwrap(),
        "a refused request was applied"
    );
    assert_eq!(before[0]["state_hash"], after[0]["state_hash"]);
    let victim: Value =
        http.get(format!("{}/v1/keys/victim", cluster.url(2))).send().await.unwrap().json().await.unwrap();
    assert_eq!(victim["value"], "intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_quorum_answers_503_and_still_serves_stale_reads() {
    let mut cluster = TestCluster::start(3).await;
    let http = cluster.http().clone();
    let put = http
        .put(format!("{}/v1/keys/k", cluster.url(3)))
        .body(r#"{"name":"k","value":"v"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    cluster.wait_converged(Duration::from_secs(10)).await;
    cluster.kill(1);
    cluster.kill(2);

    let put = http
        .put(format!("{}/v1/keys/k2", cluster.url(3)))
        .body(r#"{"name":"k2","value":"v"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 503);
    assert_eq!(put.headers().get("retry-after").unwrap(), "1");
    let body: Value = put.json().await.unwrap();
    assert!(body["faultstring"].as_str().unwrap().starts_with("No leader is available"), "{body}");

    let get = http.get(format!("{}/v1/keys/k", cluster.url(3))).send().await.unwrap();
    assert_eq!(get.status(), 503, "a linearizable read needs a quorum");
    let stale = http.get(format!("{}/v1/keys/k?consistency=stale", cluster.url(3))).send().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert!(stale.headers().get("x-st2kv-applied-index").is_some());
    let body: Value = stale.json().await.unwrap();
    assert_eq!(body["value"], "v");
}
