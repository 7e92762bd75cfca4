//! A node that was down while thousands of writes happened, and whose missing entries the
//! leader has purged behind a snapshot, catches up by installing that snapshot.

use std::time::Duration;

use st2kv_api::{GetOptions, KeyValuePairRequest, ListOptions};
use st2kv_tests::{ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_the_log_was_purged_catches_up_from_a_snapshot() {
    let opts = ClusterOptions {
        node_args: ["--snapshot-every", "300", "--snapshot-keep", "50"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    let mut cluster = TestCluster::start_with(3, opts).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let lagger = (1..=3).find(|i| *i != leader).unwrap();
    // A key the lagging node has, that is deleted while it is down: it must not survive.
    let keys = cluster.client(leader);
    keys.keys().set(&KeyValuePairRequest::new("stale-key", "old")).await.unwrap();
    cluster.wait_converged(Duration::from_secs(10)).await;
    let lagger_last = cluster.status(lagger).await.unwrap()["last_log_index"].as_u64().unwrap();
    assert!(cluster.stop(lagger), "node {lagger} stopped cleanly on SIGTERM");

    keys.keys().delete("stale-key", &Default::default()).await.unwrap();
    // Thousands of writes, one entry each (sequential), so the log rolls over several snapshots.
    for n in 0..2000 {
        keys.keys().set(&KeyValuePairRequest::new(format!("bulk-{n:05}"), format!("v{n}"))).await.unwrap();
    }
    let lstatus = cluster.status(leader).await.unwrap();
    let purged = lstatus["purged_index"].as_u64().expect("leader purged its log");
    assert!(purged > lagger_last, "leader purged up to {purged}, past the lagging node's {lagger_last}");

    cluster.restart(lagger).await;
    let all = cluster.wait_converged(Duration::from_secs(60)).await;
    let st = all.iter().find(|s| s["id"].as_u64() == Some(lagger as u64)).unwrap();
    assert!(
        st["snapshot_index"].as_u64().unwrap_or(0) > lagger_last,
        "node {lagger} holds a snapshot newer than what it had: {st}"
    );

    let c = cluster.client(lagger);
    let got = c.keys().get("bulk-01999", &GetOptions { stale: true, ..Default::default() }).await.unwrap();
    assert_eq!(got.value, "v1999");
    assert!(c
        .keys()
        .get("stale-key", &GetOptions { stale: true, ..Default::default() })
        .await
        .unwrap_err()
        .is_not_found());
    let listed = c
        .keys()
        .list(&ListOptions {
            prefix: Some("bulk-".into()),
            limit: Some(-1),
            stale: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 2000);
}
