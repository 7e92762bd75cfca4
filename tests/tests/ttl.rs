//! A key with a TTL is listed before it expires and is gone after, on every node; expired keys
//! are purged from storage by the leader.

use std::time::Duration;

use st2kv_api::{GetOptions, KeyValuePairRequest, ListOptions};
use st2kv_tests::{ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_ttl_is_visible_until_it_expires_then_gone_everywhere() {
    let opts =
        ClusterOptions { node_args: vec!["--ttl-sweep-ms".into(), "200".into()], ..Default::default() };
    let cluster = TestCluster::start_with(3, opts).await;
    let follower = cluster.follower().await;
    let mut req = KeyValuePairRequest::new("short-lived", "soon gone");
    req.ttl = Some(2);
    let set = cluster.client(follower).keys().set(&req).await.unwrap();
    let expiry = set.expire_timestamp.expect("expire_timestamp is shown for a key with a ttl");
    assert!(expiry.ends_with('Z') && expiry.len() == 27, "StackStorm's format: {expiry}");
    cluster.client(1).keys().set(&KeyValuePairRequest::new("forever", "stays")).await.unwrap();

    for i in 1..=3 {
        let listed = cluster.client(i).keys().list(&ListOptions::default()).await.unwrap();
        assert!(listed.iter().any(|k| k.name == "short-lived"), "node {i} lists the key before expiry");
    }
    tokio::time::sleep(Duration::from_millis(2600)).await;
    for i in 1..=3 {
        let client = cluster.client(i);
        let listed = client.keys().list(&ListOptions::default()).await.unwrap();
        assert!(!listed.iter().any(|k| k.name == "short-lived"), "node {i} lists an expired key");
        assert!(listed.iter().any(|k| k.name == "forever"));
        let stale = GetOptions { stale: true, ..Default::default() };
        assert!(client.keys().get("short-lived", &stale).await.unwrap_err().is_not_found(), "node {i}");
    }
    // The leader's sweeper purges it from every replica's storage.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = cluster.wait_converged(Duration::from_secs(10)).await;
        if all.iter().all(|s| s["keys"].as_u64() == Some(1)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "expired key never purged: {all:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
