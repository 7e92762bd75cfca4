//! The real StackStorm CLI (`st2`, st2client 3.9.0 from PyPI), unchanged, against a follower:
//! set, get, list -j, delete, and a migration of the `list -j` dump into another cluster with
//! `st2 key load`.

use serde_json::{json, Value};
use st2kv_api::{GetOptions, ListOptions};
use st2kv_tests::{st2, st2_cli, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_st2_cli_round_trips_keys_through_a_follower() {
    let Some(cli) = st2_cli() else { return };
    let source = TestCluster::start(3).await;
    let f = source.follower().await;
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| st2(&cli, &source, f, home.path(), args);

    let out = run(&["key", "set", "os_keystone_endpoint", "http://keystone:5000/v3"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("os_keystone_endpoint") && out.stdout.contains("st2kv.system"), "{out:?}");
    let out = run(&["key", "set", "date_cmd", "date -u", "-l", "3600"]);
    assert_eq!(out.code, 0, "{out:?}");

    let out = run(&["key", "get", "os_keystone_endpoint", "-j"]);
    assert_eq!(out.code, 0, "{out:?}");
    let got: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        got,
        json!({"encrypted": false, "name": "os_keystone_endpoint", "scope": "st2kv.system", "secret": false,
               "value": "http://keystone:5000/v3"})
    );

    let out = run(&["key", "list", "-j"]);
    assert_eq!(out.code, 0, "{out:?}");
    let dump: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(dump.len(), 2, "{dump:?}");
    let date = dump.iter().find(|k| k["name"] == "date_cmd").unwrap();
    assert_eq!(date["value"], "date -u");
    assert!(date["expire_timestamp"].as_str().unwrap().ends_with('Z'));
    std::fs::write(home.path().join("dump.json"), &out.stdout).unwrap();

    // The same dump loads into another cluster unchanged.
    let target = TestCluster::start(1).await;
    let out = st2(&cli, &target, 1, home.path(), &["key", "load", "dump.json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let moved = target.client(1).keys().list(&ListOptions::default()).await.unwrap();
    let mut names: Vec<_> = moved.iter().map(|k| (k.name.as_str(), k.value.as_str())).collect();
    names.sort();
    assert_eq!(names, vec![("date_cmd", "date -u"), ("os_keystone_endpoint", "http://keystone:5000/v3")]);

    let out = run(&["key", "delete", "os_keystone_endpoint"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("Resource with id \"os_keystone_endpoint\" has been successfully deleted."),
        "{out:?}"
    );
    let out = run(&["key", "get", "os_keystone_endpoint"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("Key Value Pair \"os_keystone_endpoint\" is not found."), "{out:?}");
    let out = run(&["key", "delete", "os_keystone_endpoint"]);
    assert_eq!(out.code, 2, "{out:?}");

    // What the st2 CLI did through the follower is what every node of the source holds.
    for i in 1..=3 {
        let c = source.client(i);
        assert!(c
            .keys()
            .get("os_keystone_endpoint", &GetOptions::default())
            .await
            .unwrap_err()
            .is_not_found());
        assert_eq!(c.keys().get("date_cmd", &GetOptions::default()).await.unwrap().value, "date -u");
    }

    // A server-side error reaches the st2 user as StackStorm's error display.
    let out = run(&["key", "set", "k", "v", "-s", "galaxy"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("MESSAGE: Scope st2kv.galaxy is not in allowed scopes list"), "{out:?}");
}
