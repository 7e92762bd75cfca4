//! `st2kv cluster ...` and `st2kv snapshot save`: the operator's commands.

use crate::args::{ClusterCommand, SnapshotCommand};
use crate::commands::{Context, Outcome};
use crate::output::Format;

pub async fn cluster(cmd: ClusterCommand, cx: &Context<'_>) -> Outcome {
    match cmd {
        ClusterCommand::Status => match cx.client.cluster_status().await {
            Ok(s) if cx.format != Format::Table => match cx.format {
                Format::Yaml => Outcome::ok(serde_yaml::to_string(&s).unwrap_or_default()),
                _ => Outcome::ok(format!("{}\n", serde_json::to_string_pretty(&s).unwrap_or_default())),
            },
            Ok(s) => Outcome::ok(status_table(&s)),
            Err(e) => Outcome::fail(cx.describe(&e)),
        },
        ClusterCommand::Add { id, peer_addr, api_addr } => {
            match cx.client.add_member(id, &peer_addr, &api_addr).await {
                Ok(()) => Outcome::ok(format!("Node {id} joined the cluster as a voter.\n")),
                Err(e) => Outcome::fail(cx.describe(&e)),
            }
        }
        ClusterCommand::Remove { id } => match cx.client.remove_member(id).await {
            Ok(()) => Outcome::ok(format!("Node {id} was removed from the cluster; stop its process.\n")),
            Err(e) => Outcome::fail(cx.describe(&e)),
        },
    }
}

fn status_table(s: &serde_json::Value) -> String {
    let mut out = format!(
        "node {} is {}; leader {}, term {}, last log {}, applied {}, snapshot {}\n",
        s["id"],
        s["state"].as_str().unwrap_or("?"),
        s["leader"],
        s["term"],
        s["last_log_index"],
        s["applied_index"],
        s["snapshot_index"]
    );
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::ASCII_FULL);
    t.set_header(vec!["id", "role", "peer", "api", "matched", "lag"]);
    for m in s["members"].as_array().into_iter().flatten() {
        let role = if m["voter"] == true { "voter" } else { "learner" };
        let show = |v: &serde_json::Value| {
            if v.is_null() {
                "-".to_string()
            } else {
                v.to_string().trim_matches('"').to_string()
            }
        };
        t.add_row(vec![
            show(&m["id"]),
            role.into(),
            show(&m["rpc_addr"]),
            show(&m["api_addr"]),
            show(&m["matched_index"]),
            show(&m["lag"]),
        ]);
    }
    out.push_str(&t.to_string());
    out.push('\n');
    out
}

pub async fn snapshot(cmd: SnapshotCommand, cx: &Context<'_>) -> Outcome {
    let SnapshotCommand::Save { file } = cmd;
    let bytes = match cx.client.snapshot().await {
        Ok(b) => b,
        Err(e) => return Outcome::fail(cx.describe(&e)),
    };
    // Check what arrived before keeping it: a backup is only useful if it restores.
    let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
        return Outcome::fail("the server's answer is not an st2kv backup");
    };
    let header: serde_json::Value = match serde_json::from_slice(&bytes[..nl]) {
        Ok(h) => h,
        Err(e) => return Outcome::fail(format!("the server's answer is not an st2kv backup: {e}")),
    };
    let data = &bytes[nl + 1..];
    use sha2::Digest;
    if header["sha256"].as_str() != Some(hex::encode(sha2::Sha256::digest(data)).as_str()) {
        return Outcome::fail("the backup's checksum does not match what arrived; nothing was written");
    }
    if let Err(e) = std::fs::write(&file, &bytes) {
        return Outcome::fail(format!("cannot write {}: {e}", file.display()));
    }
    Outcome::ok(format!(
        "Saved a snapshot at log index {} ({} bytes, sha256 {}) to {}\n",
        header["last_log_index"],
        data.len(),
        header["sha256"].as_str().unwrap_or(""),
        file.display()
    ))
}
