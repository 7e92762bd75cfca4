//! A 3-node cluster replicates every write to every node, whichever node receives it.

use std::time::Duration;

use st2kv_api::{GetOptions, KeyValuePairRequest, ListOptions};
use st2kv_tests::{unique, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_each_node_is_readable_through_every_node() {
    let cluster = TestCluster::start(3).await;
    let mut written = Vec::new();
    for i in 1..=3 {
        let name = unique(&format!("via-node{i}"));
        let set = cluster
            .client(i)
            .keys()
            .set(&KeyValuePairRequest::new(&name, format!("value {i}")))
            .await
            .unwrap();
        assert_eq!(set.name, name);
        assert_eq!(set.scope.as_deref(), Some("st2kv.system"));
        written.push((name, format!("value {i}")));
    }
    for i in 1..=3 {
        let client = cluster.client(i);
        let keys = client.keys();
        for (name, value) in &written {
            let got = keys.get(name, &GetOptions::default()).await.unwrap();
            assert_eq!(&got.value, value, "node {i} read {name}");
        }
        let listed =
            keys.list(&ListOptions { prefix: Some("via-node".into()), ..Default::default() }).await.unwrap();
        assert_eq!(listed.len(), 3, "node {i} lists every write");
    }
    cluster.wait_converged(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_a_follower_is_applied_exactly_once() {
    let cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let before = cluster.wait_converged(Duration::from_secs(10)).await;
    let ops_before = before[0]["ops_applied"].as_u64().unwrap();

    let name = unique("once");
    let set = cluster.client(follower).keys().set(&KeyValuePairRequest::new(&name, "v")).await.unwrap();
    assert_eq!(set.value, "v");

    let after = cluster.wait_converged(Duration::from_secs(10)).await;
    for s in &after {
        assert_eq!(
            s["ops_applied"].as_u64().unwrap(),
            ops_before + 1,
            "node {} applied the op once",
            s["id"]
        );
    }
    // Every node serves the same record, including the id chosen by the follower.
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(cluster.client(i).keys().get(&name, &GetOptions::default()).await.unwrap().id);
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "ids differ: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_gone_on_every_node() {
    let cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let name = unique("doomed");
    cluster.client(1).keys().set(&KeyValuePairRequest::new(&name, "x")).await.unwrap();
    cluster.client(follower).keys().delete(&name, &Default::default()).await.unwrap();
    for i in 1..=3 {
        let err = cluster.client(i).keys().get(&name, &GetOptions::default()).await.unwrap_err();
        assert!(err.is_not_found(), "node {i}: {err}");
    }
    // Deleting it again is a 404 with StackStorm's message.
    let err = cluster.client(2).keys().delete(&name, &Default::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(
        err.to_string(),
        format!("404: The key \"{name}\" does not exist in the StackStorm datastore.")
    );
}
