//! # st2kv-node: one node of an st2kv cluster
//!
//! A node is three HTTP listeners in front of one Raft member:
//! - the **API** listener (default `:9101`, StackStorm's API port) serves the keys API under
//!   `/v1`, `/api/v1` and `/`, exactly as StackStorm shapes it, plus `/v1/cluster/status`;
//! - the **auth** listener (default `:9100`, StackStorm's auth port) issues tokens for HTTP Basic
//!   logins (`POST /tokens`), so the real `st2 login` works with nothing but a base URL;
//! - the **peer** listener (default `:9300`) carries Raft RPCs and writes forwarded by followers,
//!   and nothing else. It is never reachable through the API port.
//!
//! A request is validated on the node that receives it, turned into a complete
//! [`st2kv_raft::Command`] (timestamps, expiry instants and ids decided here), and handed to
//! [`cluster::Cluster`], which group-commits it through Raft, forwarding to the leader when this
//! node is a follower. Reads wait for a linearizable barrier unless the caller asks for
//! `consistency=stale`.
//!
//! [`run`] takes a configuration and a shutdown future, so tests and the thin binary start nodes
//! the same way. On shutdown a node stops accepting, answers what is in flight, stops Raft and
//! syncs its storage.
//!
//! Every request is authenticated ([`auth`]) unless the node runs with `--insecure-no-auth`:
//! users, token hashes and API-key hashes are replicated, access follows StackStorm with RBAC
//! enabled (system keys readable by all, changed by admins; user keys private to their owner).
//!
//! Secrets are encrypted here ([`secrets`]), on the node that receives them, before anything is
//! proposed; only ciphertext is replicated.
//!
//! Operators get `/metrics` (Prometheus), `/v1/health/{live,ready}`, `/v1/cluster/status` and
//! membership changes (`/v1/cluster/members`, or `--join` on a new node).
//!
//! Automation ([`rules`], [`engine`], [`templates`], [`runners`]): StackStorm-style rules are
//! replicated; every event (webhook, timer, key change) is committed as a trigger instance before
//! the leader evaluates it, and each (instance, rule) pair gets one execution id, recorded
//! create-if-absent, so a rule fires once per event across leader changes. Templates render
//! against the local state machine after a read barrier; decrypted values are masked in
//! everything stored.
//!
//! Backups: `GET /v1/cluster/snapshot` streams a consistent snapshot with a SHA-256 checksum
//! (secrets stay ciphertext); `--restore-from FILE` seeds a new cluster's nodes from it.
//!
//! ## What this crate deliberately does not do (yet)
//! - Incremental backups, or restoring into a running cluster.
//!
//! Storage and consensus live in `st2kv-raft`; this crate holds no storage logic.

pub mod accounts;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod rules;
pub mod runners;
pub mod secrets;
pub mod templates;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use st2kv_raft::network::{peer_router, Network, PeerClient};
use st2kv_raft::{Node, Raft, RaftTuning};
use tokio::net::TcpListener;

pub use config::Config;
use error::ApiError;

/// Input limits, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_name_bytes: usize,
    pub max_value_bytes: usize,
}

/// What every handler shares.
pub struct App {
    pub cluster: Arc<cluster::Cluster>,
    pub limits: Limits,
    pub auth: auth::AuthConfig,
    pub secrets: secrets::Secrets,
    /// `host:port` of this node's API, as clients should see it.
    pub api_advertise: String,
    /// The rules engine's shared state.
    pub engine: engine::Shared,
}

/// Route table of the keys API, mounted under several prefixes.
fn key_routes() -> Router<Arc<App>> {
    use axum::routing::{get as g, put as p};
    Router::new()
        .route("/keys", g(keys::list).put(keys::put_without_name))
        .route("/keys/", g(keys::list).put(keys::put_without_name))
        .route("/keys/{name}", g(keys::get).put(keys::put).delete(keys::delete))
        .route("/keys/{name}/", g(keys::get).put(keys::put).delete(keys::delete))
        .route("/cluster/status", get(status))
        .route("/cluster/members", axum::routing::post(add_member))
        .route("/cluster/snapshot", get(backup))
        .route("/cluster/members/{id}", axum::routing::delete(remove_member))
        .route("/health/live", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/health/ready", get(ready))
        .route("/user", get(accounts::whoami))
        .route("/apikeys", g(accounts::list_apikeys).post(accounts::create_apikey))
        .route("/apikeys/", g(accounts::list_apikeys).post(accounts::create_apikey))
        .route(
            "/apikeys/{id}",
            g(accounts::get_apikey).put(accounts::update_apikey).delete(accounts::delete_apikey),
        )
        .route("/users", g(accounts::list_users).post(accounts::create_user))
        .route("/users/", g(accounts::list_users).post(accounts::create_user))
        .route(
            "/users/{name}",
            g(accounts::get_user).put(accounts::update_user).delete(accounts::delete_user),
        )
        .route("/tokens/{token}", axum::routing::delete(accounts::revoke_token))
        .route("/keyring/reencrypt", axum::routing::post(keys::reencrypt))
        .route("/templates/render", axum::routing::post(templates::render))
        .route("/rules", g(rules::list).post(rules::create))
        .route("/rules/", g(rules::list).post(rules::create))
        .route("/rules/{ref_or_id}", g(rules::get).put(rules::update).delete(rules::delete))
        .route("/rules/{ref_or_id}/{verb}", axum::routing::post(rules::enable))
        .route("/webhooks/{*url}", axum::routing::post(engine::webhook))
        .route("/executions", g(engine::list_executions).post(engine::run_execution))
        .route("/executions/", g(engine::list_executions).post(engine::run_execution))
        .route("/executions/{id}", g(engine::get_execution).put(engine::complete_execution))
        .route("/executions/{id}/claim", axum::routing::post(engine::claim_execution))
        .route("/", p(keys::put_without_name))
}

/// `POST /v1/cluster/members` (admin) `{"id": N, "peer_addr": "host:port", "api_addr": "host:port"}`:
/// add a node as a learner, promote it once caught up.
async fn add_member(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = auth::authenticate(&app, &headers, &q, true).await?;
    req.require_admin("change the cluster's membership")?;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("Failed to parse request body: {e}")))?;
    let id = doc["id"]
        .as_u64()
        .filter(|i| *i > 0)
        .ok_or_else(|| ApiError::BadRequest("'id' must be a node id (1 or more)".into()))?;
    let rpc_addr = doc["peer_addr"]
        .as_str()
        .filter(|a| a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()))
        .ok_or_else(|| {
            ApiError::BadRequest("'peer_addr' must be HOST:PORT of the node's peer listener".into())
        })?
        .to_string();
    let api_addr = doc["api_addr"].as_str().unwrap_or_default().to_string();
    app.cluster
        .change_membership(st2kv_raft::network::MembershipChange::Add {
            id,
            node: Node { rpc_addr, api_addr },
        })
        .await?;
    Ok(Json(json!({"added": id})))
}

/// `DELETE /v1/cluster/members/{id}` (admin): remove a voter or learner, the leader included.
async fn remove_member(
    State(app): State<Arc<App>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Result<axum::http::StatusCode, ApiError> {
    let req = auth::authenticate(&app, &headers, &q, true).await?;
    req.require_admin("change the cluster's membership")?;
    app.cluster.change_membership(st2kv_raft::network::MembershipChange::Remove { id }).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// The first line of a backup file; the snapshot data follows it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct BackupHeader {
    pub format: String,
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub bytes: usize,
    pub sha256: String,
}

const BACKUP_FORMAT: &str = "st2kv-snapshot-v1";

/// `GET /v1/cluster/snapshot` (admin): a snapshot that includes every write acknowledged before
/// the call (a fresh one is built if the last is older), as a header line and the data.
async fn backup(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    use sha2::Digest;
    let req = auth::authenticate(&app, &headers, &q, true).await?;
    req.require_admin("take backups")?;
    let target = app.cluster.view.applied()?.map(|l| l.index).unwrap_or(0);
    let have = app.cluster.view.current_snapshot()?.map(|(i, _, _)| i).unwrap_or(0);
    if have < target || have == 0 {
        app.cluster.raft.trigger().snapshot().await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        app.cluster
            .raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(|m| m.snapshot.map(|l| l.index).unwrap_or(0) >= target.max(1), "backup snapshot")
            .await
            .map_err(|e| ApiError::Unavailable(format!("the snapshot was not built in time: {e}")))?;
    }
    let (index, term, data) = app
        .cluster
        .view
        .current_snapshot()?
        .ok_or_else(|| ApiError::Unavailable("no snapshot available".into()))?;
    let header = BackupHeader {
        format: BACKUP_FORMAT.into(),
        last_log_index: index,
        last_log_term: term,
        bytes: data.len(),
        sha256: hex::encode(sha2::Sha256::digest(&data)),
    };
    let mut body = serde_json::to_vec(&header).expect("header JSON");
    body.push(b'\n');
    body.extend_from_slice(&data);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Verify a backup file and return its snapshot data.
pub fn read_backup(bytes: &[u8]) -> anyhow::Result<(BackupHeader, &[u8])> {
    use sha2::Digest;
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| anyhow::anyhow!("not an st2kv backup (no header)"))?;
    let header: BackupHeader =
        serde_json::from_slice(&bytes[..nl]).map_err(|e| anyhow::anyhow!("not an st2kv backup: {e}"))?;
    anyhow::ensure!(header.format == BACKUP_FORMAT, "unsupported backup format {:?}", header.format);
    let data = &bytes[nl + 1..];
    anyhow::ensure!(data.len() == header.bytes, "backup truncated: {} of {} bytes", data.len(), header.bytes);
    let sum = hex::encode(sha2::Sha256::digest(data));
    anyhow::ensure!(sum == header.sha256, "backup checksum mismatch (corrupted file)");
    Ok((header, data))
}

/// Seed the empty data dir `data_dir` from the backup `file` (checksum verified), like
/// `etcdutl snapshot restore`: `st2kv-node restore FILE --data-dir D`, or `--restore-from` at start.
pub fn restore(file: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<String> {
    let backup = Backup::read(file)?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", data_dir.display()))?;
    backup.seed(data_dir, |data| st2kv_raft::store::seed(data_dir, data))
}

/// A backup file, read and verified.
struct Backup {
    file: std::path::PathBuf,
    bytes: Vec<u8>,
}

impl Backup {
    fn read(file: &std::path::Path) -> anyhow::Result<Backup> {
        let bytes =
            std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read backup {}: {e}", file.display()))?;
        read_backup(&bytes).map_err(|e| anyhow::anyhow!("backup {}: {e}", file.display()))?;
        Ok(Backup { file: file.to_path_buf(), bytes })
    }

    /// Hand the snapshot data to `seed`, and say what was done.
    fn seed(
        &self,
        data_dir: &std::path::Path,
        seed: impl FnOnce(&[u8]) -> Result<usize, st2kv_raft::store::StoreError>,
    ) -> anyhow::Result<String> {
        let (header, data) = read_backup(&self.bytes)?;
        let n = seed(data).map_err(|e| anyhow::anyhow!("restoring {} failed: {e}", self.file.display()))?;
        Ok(format!(
            "{} seeded from {} ({n} records, log index {}); start the nodes with --initial-cluster",
            data_dir.display(),
            self.file.display(),
            header.last_log_index
        ))
    }
}

/// Count every request by method, matched route and status.
async fn count_requests(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let labels = metrics::HttpLabels { method, route, status: resp.status().as_u16() };
    app.cluster.metrics.http_requests.get_or_create(&labels).inc();
    resp
}

/// The token routes, on the auth listener at `/` and `/v1`, and on the API at `/auth/v1`.
fn token_routes() -> Router<Arc<App>> {
    use axum::routing::{delete, post};
    Router::new()
        .route("/tokens", post(accounts::create_token))
        .route("/tokens/", post(accounts::create_token))
        .route("/tokens/{token}", delete(accounts::revoke_token))
}

/// `GET /v1/health/ready`: 200 once this node knows a leader and has applied everything the
/// leader had committed when asked; 503 otherwise. Needs no credentials.
async fn ready(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    app.cluster.linearize().await?;
    Ok(Json(json!({"status": "ready", "leader": app.cluster.leader().map(|(id, _)| id)})))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("The resource could not be found.".into())
}

async fn method_not_allowed() -> axum::response::Response {
    use axum::response::IntoResponse;
    let body =
        Json(st2kv_api::ErrorBody { faultstring: "The method is not allowed for the requested URL.".into() });
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, body).into_response()
}

/// The public API router.
pub fn api_router(app: Arc<App>) -> Router {
    let metrics_app = app.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let app = metrics_app.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        app.cluster.metrics.render(&app.cluster.raft),
                    )
                }
            }),
        )
        .nest("/v1", key_routes())
        .nest("/api/v1", key_routes())
        .merge(key_routes())
        .nest("/auth/v1", token_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), count_requests))
        .with_state(app)
}

fn auth_router(app: Arc<App>) -> Router {
    Router::new()
        .merge(token_routes())
        .nest("/v1", token_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// `GET /v1/cluster/status`: this node's view of the cluster. `?hash=true` adds a digest of the
/// whole key space (O(keys)), which tests use to check that replicas converged.
async fn status(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = auth::authenticate(&app, &headers, &q, false).await?;
    req.require_admin("read the cluster status")?;
    let m = app.cluster.raft.metrics().borrow().clone();
    let view = &app.cluster.view;
    let members: Vec<_> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| {
            let voter = m.membership_config.membership().voter_ids().any(|v| v == *id);
            let matched = m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index);
            let lag = m
                .replication
                .as_ref()
                .map(|_| m.last_log_index.unwrap_or(0).saturating_sub(matched.unwrap_or(0)));
            json!({"id": id, "rpc_addr": n.rpc_addr, "api_addr": n.api_addr, "voter": voter,
                   "matched_index": matched, "lag": lag})
        })
        .collect();
    let mut body = json!({
        "id": app.cluster.id,
        "state": format!("{:?}", m.state),
        "leader": m.current_leader,
        "term": m.current_term,
        "last_log_index": m.last_log_index,
        "applied_index": m.last_applied.map(|l| l.index),
        "snapshot_index": m.snapshot.map(|l| l.index),
        "purged_index": m.purged.map(|l| l.index),
        "ops_applied": view.ops_applied()?,
        "millis_since_quorum_ack": m.millis_since_quorum_ack,
        "keys": view.key_count(),
        "members": members,
    });
    if q.get("hash").map(|v| v == "true").unwrap_or(false) {
        body["state_hash"] = json!(format!("{:016x}", view.state_hash()?));
    }
    Ok(Json(body))
}

/// Install the tracing subscriber: `plain` or `json` lines on stderr, filtered by `RUST_LOG`
/// (default `info`).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the {what} listener on {addr}: {e}"))
}

fn serve(
    listener: TcpListener,
    router: Router,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let mut stop = stop;
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    })
}

/// Run a node until `shutdown` completes, then stop it gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let members = config.initial_members()?;
    let secret = config.cluster_secret()?;
    let admin_password = config.admin_password()?;
    let secrets =
        secrets::Secrets::load(config.crypto_key_path.clone(), config.st2_legacy_key_path.as_deref())?;
    anyhow::ensure!(config.node_id != 0, "--id must be at least 1");
    if config.insecure_no_auth {
        tracing::warn!("authentication is DISABLED (--insecure-no-auth): every request acts as the admin `stanley`, and peers are not authenticated unless a cluster secret is set");
    } else if members.len() > 1 && secret.is_none() {
        anyhow::bail!(
            "a multi-node cluster needs a cluster secret so that only its members can use the peer port: \
             set --cluster-secret-file (or ST2KV_CLUSTER_SECRET) to the same value on every node, \
             or pass --insecure-no-auth for a development cluster"
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    let seed_from = match &config.restore_from {
        Some(file) if config.data_dir.join("sled").exists() => {
            tracing::warn!(file = %file.display(), "the data dir already holds a store; ignoring --restore-from");
            None
        }
        other => other.clone(),
    };
    // Verify the backup before the store exists, so a bad file leaves the data dir untouched.
    let backup = seed_from.map(|file| Backup::read(&file)).transpose()?;
    let store = st2kv_raft::store::open_with_cache(&config.data_dir, !config.no_fsync, config.cache_mb)
        .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", config.data_dir.display()))?;
    if let Some(b) = backup {
        let msg =
            b.seed(&config.data_dir, |data| st2kv_raft::store::seed_store(&store, &config.data_dir, data))?;
        tracing::info!("{msg}");
    }
    let closer = store.closer.clone();
    let key_changes = store.changes.subscribe();
    let tuning = RaftTuning {
        heartbeat_ms: config.heartbeat_ms,
        election_min_ms: config.election_timeout_ms,
        election_max_ms: config.election_timeout_ms * 2,
        snapshot_every: config.snapshot_every,
        keep_after_snapshot: config.snapshot_keep,
    };
    let raft_config = Arc::new(tuning.to_config(&config.cluster_name).map_err(|e| anyhow::anyhow!(e))?);
    let local_ip = Some(config.peer_bind.ip()).filter(|ip| !ip.is_unspecified());
    let peers = PeerClient::new(secret.clone(), local_ip);

    // Bind everything before Raft starts, so a port clash fails fast and cleanly.
    let api_l = bind(config.api_bind, "API").await?;
    let auth_l = bind(config.auth_bind, "auth").await?;
    let peer_l = bind(config.peer_bind, "peer").await?;

    let durability = store.durability.clone();
    let network = Network::new(peers.clone(), durability.clone());
    let raft = Raft::new(config.node_id, raft_config, network, store.log, store.state_machine)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start Raft: {e}"))?;
    let initializer = config.join.is_none()
        && members.iter().map(|(id, _)| *id).min().unwrap_or(config.node_id) == config.node_id;
    let fresh = !raft.is_initialized().await.map_err(|e| anyhow::anyhow!("raft: {e}"))?;
    if fresh && initializer && !config.insecure_no_auth && admin_password.is_none() {
        let _ = raft.shutdown().await;
        anyhow::bail!(
            "this node would create a new cluster, but no admin credentials were given: \
             set --admin-password-file (or ST2KV_ADMIN_PASSWORD) for the admin user {:?}, \
             or pass --insecure-no-auth for a development cluster without authentication",
            config.admin_user
        );
    }
    // Refuse to serve with a keyring that cannot read every stored secret (a key retired too
    // early): better a clear start-up error than secrets that fail one read at a time.
    if let Some(ring) = secrets.ring() {
        let mut missing = std::collections::BTreeSet::new();
        for (_, r) in store.view.secrets().map_err(|e| anyhow::anyhow!("scanning secrets: {e}"))? {
            match st2kv_api::keyring::Keyring::key_id_of(&r.value) {
                Some(id) if ring.has_key(&id) => {}
                Some(id) => {
                    missing.insert(id);
                }
                None => {
                    missing.insert("(unrecognised ciphertext)".to_string());
                }
            }
        }
        if !missing.is_empty() {
            let _ = raft.shutdown().await;
            anyhow::bail!(
                "stored secrets need keys the keyring {} lacks: {}; restore those keys (st2kv key reencrypt before retiring)",
                config.crypto_key_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                missing.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let cluster = cluster::Cluster::start(
        config.node_id,
        raft.clone(),
        store.view,
        peers.clone(),
        Duration::from_millis(config.leader_wait_ms),
        cluster::Batching { max_ops: config.batch_max, inflight: config.batch_inflight },
        Arc::new(metrics::Metrics::new()),
    );
    let app = Arc::new(App {
        cluster: cluster.clone(),
        limits: Limits { max_name_bytes: config.max_name_bytes, max_value_bytes: config.max_value_bytes },
        secrets,
        auth: auth::AuthConfig {
            enabled: !config.insecure_no_auth,
            token_ttl_s: config.token_ttl,
            token_max_ttl_s: config.token_max_ttl,
            limiter: auth::LoginLimiter::new(
                config.login_burst,
                Duration::from_secs(config.login_window_secs),
            ),
            dummy_hash: auth::hash_password(hex::encode(rand::random::<[u8; 16]>())).await?,
        },
        api_advertise: config.api_advertise(),
        engine: engine::Shared::new(config.daily_timer_period_ms),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (peer_stop_tx, peer_stop_rx) = tokio::sync::watch::channel(false);
    let peer_srv = serve(
        peer_l,
        peer_router(raft.clone(), durability, secret, Some(cluster.forward_sink())),
        peer_stop_rx,
    );
    let api_srv = serve(api_l, api_router(app.clone()), stop_rx.clone());
    let auth_srv = serve(auth_l, auth_router(app.clone()), stop_rx);

    let joiner = match (&config.join, fresh) {
        (Some(addr), true) => Some(tokio::spawn(join(peers, addr.clone(), config.node_id, me_node(&config)))),
        _ => {
            bootstrap(&raft, &config, &members).await?;
            None
        }
    };
    // The initializing node makes sure the admin exists, on every start (create-if-absent, so a
    // password changed later through the API is never overwritten, and a crash before the first
    // bootstrap is repaired by the next start). Other nodes never propose it, so once a login
    // works no bootstrap write is still on its way.
    let admin_task = match (&admin_password, config.insecure_no_auth || !initializer) {
        (Some(pw), false) => {
            let (app, user, pw) = (app.clone(), config.admin_user.clone(), pw.clone());
            Some(tokio::spawn(async move {
                while let Err(e) = accounts::ensure_admin(&app, &user, &pw).await {
                    tracing::debug!(error = %e, "admin bootstrap will be retried");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }))
        }
        _ => None,
    };
    let engine_tasks =
        [tokio::spawn(engine::feed(app.clone(), key_changes)), tokio::spawn(engine::run(app.clone()))];
    let sweeper =
        tokio::spawn(cluster::ttl_sweeper(cluster.clone(), Duration::from_millis(config.ttl_sweep_ms)));
    let snapshots = tokio::spawn(cluster::snapshot_trigger(
        cluster.clone(),
        config.snapshot_every,
        Duration::from_millis(200),
    ));
    let disk_watch =
        tokio::spawn(cluster::disk_watch(cluster.clone(), config.data_dir.clone(), config.min_free_mb));
    tracing::info!(
        id = config.node_id,
        api = %config.api_bind,
        auth = %config.auth_bind,
        peer = %config.peer_bind,
        "st2kv node started"
    );

    shutdown.await;
    tracing::info!("shutting down: draining requests");
    let _ = stop_tx.send(true);
    for srv in [api_srv, auth_srv] {
        match tokio::time::timeout(Duration::from_secs(10), srv).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "listener stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "listener task failed"),
            Err(_) => tracing::warn!("in-flight requests did not finish within 10 s"),
        }
    }
    sweeper.abort();
    snapshots.abort();
    disk_watch.abort();
    for t in engine_tasks {
        t.abort();
    }
    if let Some(t) = joiner {
        t.abort();
    }
    if let Some(t) = admin_task {
        t.abort();
    }
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    let _ = peer_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), peer_srv).await;
    // Marks the state machine whole (no apply runs any more), so the next start trusts it as it is.
    closer.close().await.map_err(|e| anyhow::anyhow!("final storage sync failed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

fn me_node(config: &Config) -> Node {
    Node { rpc_addr: config.peer_advertise(), api_addr: config.api_advertise() }
}

/// Ask the cluster at `addr` (any member's peer address) to add this node, following "not the
/// leader" hints, until it succeeds (bounded: two minutes).
async fn join(peers: PeerClient, addr: String, id: u64, me: Node) {
    use st2kv_raft::network::{MembershipChange, PeerError};
    let change = MembershipChange::Add { id, node: me };
    let mut target = addr.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        match peers.change_membership(&target, &change, Duration::from_secs(75)).await {
            Ok(()) => {
                tracing::info!(via = %target, "joined the cluster");
                return;
            }
            Err(PeerError::NotLeader { leader: Some((_, n)) }) => target = n.rpc_addr,
            Err(e) => {
                tracing::warn!(via = %target, error = %e, "joining failed; retrying");
                target = addr.clone();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::error!("could not join the cluster through {addr} within two minutes");
}

/// Form the cluster on first start: the lowest founding id initializes it with every founding
/// member (a single node with no `--initial-cluster` initializes itself). A node that already
/// has state does nothing; "already initialized" is success.
async fn bootstrap(raft: &Raft, config: &Config, members: &[(u64, String)]) -> anyhow::Result<()> {
    if raft.is_initialized().await.map_err(|e| anyhow::anyhow!("raft: {e}"))? {
        return Ok(());
    }
    let me = me_node(config);
    let mut nodes = BTreeMap::new();
    if members.is_empty() {
        nodes.insert(config.node_id, me);
    } else {
        let lowest = members.iter().map(|(id, _)| *id).min().unwrap_or(config.node_id);
        if lowest != config.node_id {
            tracing::info!(initializer = lowest, "waiting for node {lowest} to form the cluster");
            return Ok(());
        }
        for (id, addr) in members {
            let node = if *id == config.node_id {
                me.clone()
            } else {
                Node { rpc_addr: addr.clone(), api_addr: String::new() }
            };
            nodes.insert(*id, node);
        }
    }
    match raft.initialize(nodes).await {
        Ok(()) => {
            tracing::info!("cluster initialized");
            Ok(())
        }
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot initialize the cluster: {e}")),
    }
}
