//! Every flag of `st2kv-node`, each with its environment variable, default and reason.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Configuration of one st2kv node. Every option can also be set through the environment
/// variable named in its help, which is how containers configure it.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "st2kv-node",
    version,
    about = "A node of an st2kv cluster: StackStorm's datastore, replicated with Raft"
)]
pub struct Config {
    /// This node's id in the cluster: unique, non-zero, never reused for another data dir.
    #[arg(long = "id", env = "ST2KV_NODE_ID", default_value_t = 1)]
    pub node_id: u64,

    /// Where the node keeps its Raft log, state machine and snapshots.
    #[arg(long, env = "ST2KV_DATA_DIR", default_value = "./st2kv-data")]
    pub data_dir: PathBuf,

    /// Address the public API listener binds (StackStorm's API port is 9101).
    #[arg(long, env = "ST2KV_API_BIND", default_value = "127.0.0.1:9101")]
    pub api_bind: SocketAddr,

    /// Address clients and other nodes should use for this node's API; defaults to --api-bind.
    #[arg(long, env = "ST2KV_API_ADVERTISE")]
    pub api_advertise: Option<String>,

    /// Address the auth listener binds (StackStorm's auth port is 9100).
    #[arg(long, env = "ST2KV_AUTH_BIND", default_value = "127.0.0.1:9100")]
    pub auth_bind: SocketAddr,

    /// Address the peer listener (Raft RPCs, forwarded writes) binds. Keep it on a private network.
    #[arg(long, env = "ST2KV_PEER_BIND", default_value = "127.0.0.1:9300")]
    pub peer_bind: SocketAddr,

    /// Address other nodes should use for this node's peer listener; defaults to --peer-bind.
    #[arg(long, env = "ST2KV_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,

    /// The founding members, as `ID=HOST[:PEER_PORT]` separated by commas (peer port 9300 when
    /// omitted), e.g. `1=127.0.0.1,2=127.0.0.2,3=127.0.0.3`. Every founding node gets the same
    /// list; the lowest id initializes the cluster once. Without it the node is a one-node cluster.
    #[arg(long, env = "ST2KV_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Join an existing cluster through the peer address of any member (`HOST:PORT`): the node
    /// asks to be added as a learner and is promoted to voter once it has caught up. Needs the
    /// cluster secret. Only for a node with an empty data dir; ignored once it has joined.
    #[arg(long, env = "ST2KV_JOIN")]
    pub join: Option<String>,

    /// Seed an empty data dir from a backup made by `st2kv snapshot save` (checksum verified)
    /// before starting, like `etcdutl snapshot restore`. Give the same file to every founding node
    /// of the new cluster. Ignored, with a warning, once the data dir holds a store.
    #[arg(long, env = "ST2KV_RESTORE_FROM")]
    pub restore_from: Option<PathBuf>,

    /// Shared secret every peer request must carry. Same value on every node.
    #[arg(long, env = "ST2KV_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// A file holding the cluster secret (first line), instead of --cluster-secret.
    #[arg(long, env = "ST2KV_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// Name of the Raft cluster, shown in errors and metrics.
    #[arg(long, env = "ST2KV_CLUSTER_NAME", default_value = "st2kv")]
    pub cluster_name: String,

    /// Skip fdatasync: an acknowledged write then survives a process crash but not a power loss
    /// (sled's flush is sync_file_range). For benchmarks and throwaway clusters only.
    #[arg(long, env = "ST2KV_NO_FSYNC")]
    pub no_fsync: bool,

    /// sled's page cache, in MiB. Pages beyond it are read back from the data dir's files (and
    /// the kernel's page cache); the node's resident memory is roughly this plus a working set.
    #[arg(long, env = "ST2KV_CACHE_MB", default_value_t = st2kv_raft::store::DEFAULT_CACHE_MB)]
    pub cache_mb: u64,

    /// Threads that run the node's async work; 0 means one per CPU core. When several nodes
    /// share a machine (a test or benchmark cluster), give each its share: every extra thread
    /// that competes for a core adds wake-ups and context switches to each request's path.
    #[arg(long, env = "ST2KV_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Largest key name accepted, in bytes; larger names are refused with 413.
    #[arg(long, env = "ST2KV_MAX_NAME_BYTES", default_value_t = 1024)]
    pub max_name_bytes: usize,

    /// Largest value accepted, in bytes; larger values are refused with 413.
    #[arg(long, env = "ST2KV_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    pub max_value_bytes: usize,

    /// Raft heartbeat in ms (also the AppendEntries deadline).
    #[arg(long, env = "ST2KV_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Minimum election timeout in ms; the maximum is twice this.
    #[arg(long, env = "ST2KV_ELECTION_TIMEOUT_MS", default_value_t = 500)]
    pub election_timeout_ms: u64,

    /// Take a snapshot after at least this many log entries (and once the ops applied since the
    /// last snapshot reach half the pairs it held), then purge the log behind it.
    #[arg(long, env = "ST2KV_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,

    /// Log entries kept behind a snapshot for slightly lagging followers.
    #[arg(long, env = "ST2KV_SNAPSHOT_KEEP", default_value_t = 5_000)]
    pub snapshot_keep: u64,

    /// Most client commands group-committed into one Raft entry.
    #[arg(long, env = "ST2KV_BATCH_MAX", default_value_t = 512)]
    pub batch_max: usize,

    /// Raft entries the node keeps in flight at once while group-committing. One is fastest on
    /// the machines measured: what an entry costs does not depend much on how many commands it
    /// carries, so the fewer and fuller the entries, the more commands per second.
    #[arg(long, env = "ST2KV_BATCH_INFLIGHT", default_value_t = 1)]
    pub batch_inflight: usize,

    /// How long a request waits for a leader (election, forwarding) before answering 503, in ms.
    #[arg(long, env = "ST2KV_LEADER_WAIT_MS", default_value_t = 3_000)]
    pub leader_wait_ms: u64,

    /// How often the leader looks for expired keys to purge, in ms.
    #[arg(long, env = "ST2KV_TTL_SWEEP_MS", default_value_t = 1_000)]
    pub ttl_sweep_ms: u64,

    /// Run without authentication, as StackStorm with auth disabled: every request is the admin
    /// `stanley`. For development only; the node logs a warning at start.
    #[arg(long, env = "ST2KV_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Name of the admin user a new cluster is created with.
    #[arg(long, env = "ST2KV_ADMIN_USER", default_value = "st2admin")]
    pub admin_user: String,

    /// Password of the bootstrap admin (prefer --admin-password-file).
    #[arg(long, env = "ST2KV_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// A file whose first line is the bootstrap admin's password.
    #[arg(long, env = "ST2KV_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,

    /// Lifetime of a token when the login asks for none, in seconds (StackStorm: 24 h).
    #[arg(long, env = "ST2KV_TOKEN_TTL", default_value_t = 86_400)]
    pub token_ttl: i64,

    /// Longest token lifetime a login may ask for, in seconds.
    #[arg(long, env = "ST2KV_TOKEN_MAX_TTL", default_value_t = 86_400)]
    pub token_max_ttl: i64,

    /// Failed logins for one user, per node, before further attempts answer 429.
    #[arg(long, env = "ST2KV_LOGIN_BURST", default_value_t = 5)]
    pub login_burst: usize,

    /// The window the login burst is counted over, in seconds.
    #[arg(long, env = "ST2KV_LOGIN_WINDOW_SECS", default_value_t = 60)]
    pub login_window_secs: u64,

    /// The keyring (`st2kv keygen --key-path FILE`) secrets are encrypted with. Without it the
    /// node refuses secret writes and decryption, and serves everything else. Same file on every
    /// node; re-read when it changes.
    #[arg(long, env = "ST2KV_CRYPTO_KEY_PATH")]
    pub crypto_key_path: Option<PathBuf>,

    /// A StackStorm `datastore_key.json`: pre-encrypted values made by StackStorm with it are
    /// verified and re-encrypted under our keyring when loaded (migration).
    #[arg(long, env = "ST2KV_ST2_LEGACY_KEY_PATH")]
    pub st2_legacy_key_path: Option<PathBuf>,

    /// Refuse writes (507) while the data dir's file system has less than this many MiB free,
    /// so the node never runs out of space mid-append; writes resume when space returns.
    #[arg(long, env = "ST2KV_MIN_FREE_MB", default_value_t = 64)]
    pub min_free_mb: u64,

    /// The period of the `st2.timer.daily` trigger, in milliseconds: a day. Tests shorten it.
    #[arg(long, env = "ST2KV_DAILY_TIMER_PERIOD_MS", default_value_t = 86_400_000,
          value_parser = clap::value_parser!(i64).range(1000..))]
    pub daily_timer_period_ms: i64,

    /// Log format: `plain` or `json`.
    #[arg(long, env = "ST2KV_LOG_FORMAT", default_value = "plain")]
    pub log_format: String,
}

impl Config {
    pub fn api_advertise(&self) -> String {
        self.api_advertise.clone().unwrap_or_else(|| self.api_bind.to_string())
    }

    pub fn peer_advertise(&self) -> String {
        self.peer_advertise.clone().unwrap_or_else(|| self.peer_bind.to_string())
    }

    /// The cluster secret from the flag or the file, if any.
    pub fn cluster_secret(&self) -> anyhow::Result<Option<String>> {
        if let Some(s) = &self.cluster_secret {
            return Ok(Some(s.clone()));
        }
        match &self.cluster_secret_file {
            None => Ok(None),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read cluster secret file {}: {e}", p.display()))?;
                let line = text.lines().next().unwrap_or("").trim().to_string();
                anyhow::ensure!(!line.is_empty(), "cluster secret file {} is empty", p.display());
                Ok(Some(line))
            }
        }
    }

    /// The bootstrap admin's password from the flag or the file, if any.
    pub fn admin_password(&self) -> anyhow::Result<Option<String>> {
        if let Some(p) = &self.admin_password {
            return Ok(Some(p.clone()));
        }
        match &self.admin_password_file {
            None => Ok(None),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read admin password file {}: {e}", p.display()))?;
                let line = text.lines().next().unwrap_or("").trim_end().to_string();
                anyhow::ensure!(!line.is_empty(), "admin password file {} is empty", p.display());
                Ok(Some(line))
            }
        }
    }

    /// Parse `--initial-cluster` into `(id, peer address)` pairs.
    pub fn initial_members(&self) -> anyhow::Result<Vec<(u64, String)>> {
        let Some(spec) = &self.initial_cluster else { return Ok(Vec::new()) };
        let mut out: Vec<(u64, String)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--initial-cluster entry {part:?} is not ID=HOST[:PORT]"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--initial-cluster entry {part:?}: {id:?} is not a node id"))?;
            anyhow::ensure!(id != 0, "--initial-cluster entry {part:?}: node ids start at 1");
            let addr = addr.trim();
            anyhow::ensure!(!addr.is_empty(), "--initial-cluster entry {part:?} has no address");
            let addr = if addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                addr.to_string()
            } else {
                format!("{addr}:9300")
            };
            anyhow::ensure!(!out.iter().any(|(i, _)| *i == id), "--initial-cluster names node {id} twice");
            out.push((id, addr));
        }
        if !out.is_empty() {
            anyhow::ensure!(
                out.iter().any(|(i, _)| *i == self.node_id),
                "--initial-cluster does not list this node's id {}",
                self.node_id
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["st2kv-node"];
        v.extend_from_slice(args);
        Config::parse_from(v)
    }

    #[test]
    fn initial_cluster_defaults_the_peer_port() {
        let c = cfg(&["--id", "2", "--initial-cluster", "1=127.0.0.1,2=127.0.0.2:9400, 3=n3"]);
        assert_eq!(
            c.initial_members().unwrap(),
            vec![(1, "127.0.0.1:9300".into()), (2, "127.0.0.2:9400".into()), (3, "n3:9300".into())]
        );
    }

    #[test]
    fn initial_cluster_errors_are_explained() {
        assert!(cfg(&["--initial-cluster", "1=a,1=b"])
            .initial_members()
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(cfg(&["--initial-cluster", "x=a"])
            .initial_members()
            .unwrap_err()
            .to_string()
            .contains("node id"));
        assert!(cfg(&["--id", "4", "--initial-cluster", "1=a"])
            .initial_members()
            .unwrap_err()
            .to_string()
            .contains("does not list"));
    }
}
