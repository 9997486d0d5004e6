//! Opening connections. `REDIS_URL` names one Redis or some nodes of a Redis Cluster;
//! which one it is, the server says (`INFO` → `cluster_enabled`). On one node every
//! long-lived connection is a `ConnectionManager`, which reconnects by itself after a
//! dropped connection or a Redis restart; on a cluster it is the `redis` crate's cluster
//! connection, which follows MOVED/ASK and failovers. Either way callers see the failed
//! command's error and try again.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

use crate::error::Error;

/// A connection: to one Redis node, or to a Redis Cluster. Everything but the blocking
/// reads shares one.
#[derive(Clone)]
pub(crate) enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether this is a cluster connection (one command may name one slot only).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    /// On a cluster, a pipeline whose commands name keys in several slots is sent as one
    /// pipeline per slot, all at once, and the answers are put back in order: the
    /// callers build one pipeline per operation whatever the deployment.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => {
                let conn = conn.clone();
                Box::pin(per_slot(conn, pipeline, offset, count))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Sends a non-atomic pipeline as one pipeline per slot (concurrently), answers in order.
async fn per_slot(
    mut conn: ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> redis::RedisResult<Vec<Value>> {
    // Commands without a key (WAIT, TIME) go with the command before them: a WAIT
    // after a write waits for that write's node.
    let mut slots: Vec<(Option<Slot>, Pipeline, Vec<usize>)> = Vec::new();
    let mut current = None;
    for (index, cmd) in pipeline.cmd_iter().enumerate() {
        let group = match key_of(cmd).map(Slot::for_key) {
            Some(slot) => match slots
                .iter()
                .position(|(s, _, _)| *s == Some(slot) || s.is_none())
            {
                Some(group) => {
                    slots[group].0 = Some(slot);
                    group
                }
                None => {
                    slots.push((Some(slot), Pipeline::new(), Vec::new()));
                    slots.len() - 1
                }
            },
            None => match current {
                Some(group) => group,
                None => {
                    slots.push((None, Pipeline::new(), Vec::new()));
                    slots.len() - 1
                }
            },
        };
        current = Some(group);
        slots[group].1.add_command(cmd.clone());
        slots[group].2.push(index);
    }
    // A transaction is sent as MULTI … EXEC and answered as one reply past the queued
    // ones (offset > 0); it must name one slot anyway.
    let transaction = offset != 0 || count != pipeline.len();
    if slots.len() <= 1 || transaction {
        // One slot, or a transaction: as it is.
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let sent = slots.iter().map(|(_, part, _)| {
        let mut conn = conn.clone();
        async move { conn.req_packed_commands(part, 0, part.len()).await }
    });
    let answers = futures_util::future::try_join_all(sent).await?;
    let mut ordered: Vec<Option<Value>> = vec![None; pipeline.len()];
    for ((_, _, indices), values) in slots.iter().zip(answers) {
        for (&index, value) in indices.iter().zip(values) {
            ordered[index] = Some(value);
        }
    }
    Ok(ordered
        .into_iter()
        .map(|v| v.unwrap_or(Value::Nil))
        .collect())
}

/// The key that decides where a command goes, for the commands redisaq sends: the one
/// after the subcommand for `XINFO`/`XGROUP`, the first of `KEYS` for scripts, the first
/// stream of a read, else the first argument.
fn key_of(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => bytes,
            _ => &b""[..],
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" | b"FCALL" => {
            let keys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if keys == 0 {
                return None;
            }
            args.get(3)?
        }
        b"XINFO" | b"XGROUP" | b"OBJECT" | b"MEMORY" => args.get(2)?,
        b"XREAD" | b"XREADGROUP" => {
            let streams = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(streams + 1)?
        }
        b"PING" | b"TIME" | b"INFO" | b"SCRIPT" | b"WAIT" => return None,
        _ => args.get(1)?,
    };
    Some(key.to_vec())
}

/// Where the CA to trust for `rediss://` is named, beside the system's roots.
pub(crate) const TLS_CA_FILE: &str = "REDISAQ_TLS_CA_FILE";

/// What redisaq needs to know of the server it was given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Server {
    /// A Redis Cluster (`cluster_enabled:1`).
    pub cluster: bool,
    /// The major version: script flags (`allow-oom`) need 7.
    pub major: u32,
}

impl Server {
    /// Whether the server takes script flags (`#!lua flags=...`, Redis 7.0 and later).
    pub(crate) fn takes_script_flags(&self) -> bool {
        self.major >= 7
    }
}

/// Where redisaq's Redis is, as `REDIS_URL` names it: one node, or some nodes of a
/// cluster (a comma-separated list). Cheap to clone; what the server is gets learnt
/// once, on first connect.
#[derive(Clone)]
pub(crate) struct Target {
    nodes: Arc<[Client]>,
    infos: Arc<[ConnectionInfo]>,
    /// The CA bundle for `rediss://` nodes, when `REDISAQ_TLS_CA_FILE` names one.
    roots: Option<Arc<Vec<u8>>>,
    server: Arc<OnceCell<Server>>,
}

/// Parses `REDIS_URL`: one URL (`redis://`, `rediss://` for TLS, with user and password
/// as the `redis` crate accepts them), or several separated by commas, naming nodes of
/// one Redis Cluster. For `rediss://`, the server's certificate is checked against the
/// system's roots and, if `REDISAQ_TLS_CA_FILE` names one, that CA.
pub(crate) fn client(url: &str) -> Result<Target, Error> {
    crate::keys::check_prefix().map_err(Error::config)?;
    let urls: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(Error::config(
            "REDIS_URL is empty; expected e.g. redis://127.0.0.1:6379, or for a Redis \
             Cluster some of its nodes: redis://10.0.0.1:7000,redis://10.0.0.2:7000",
        ));
    }
    let roots = if urls.iter().any(|u| u.starts_with("rediss://")) {
        // rustls needs one process-wide crypto provider; keep any the application chose.
        let _ = rustls::crypto::ring::default_provider().install_default();
        match std::env::var_os(TLS_CA_FILE).filter(|v| !v.is_empty()) {
            Some(ca_file) => Some(Arc::new(trusted_roots(std::path::Path::new(&ca_file))?)),
            None => None,
        }
    } else {
        None
    };
    let mut nodes = Vec::with_capacity(urls.len());
    let mut infos = Vec::with_capacity(urls.len());
    for url in urls {
        let invalid = |e: redis::RedisError| {
            Error::config(format!(
                "REDIS_URL {:?} is not a valid Redis URL ({e}); expected e.g. \
                 redis://127.0.0.1:6379 or rediss://user:password@host:6380/0, or for a \
                 Redis Cluster some of its nodes separated by commas",
                redact(url)
            ))
        };
        let info = url.into_connection_info().map_err(invalid)?;
        let client = match &roots {
            Some(roots) if url.starts_with("rediss://") => Client::build_with_tls(
                info.clone(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(roots.to_vec()),
                },
            )
            .map_err(|e| {
                Error::config(format!(
                    "{TLS_CA_FILE}={:?}: {e}",
                    std::env::var_os(TLS_CA_FILE).unwrap_or_default()
                ))
            })?,
            _ => Client::open(info.clone()).map_err(invalid)?,
        };
        nodes.push(client);
        infos.push(info);
    }
    Ok(Target {
        nodes: nodes.into(),
        infos: infos.into(),
        roots,
        server: Arc::new(OnceCell::new()),
    })
}

impl Target {
    /// What the server is, asked of the first node that answers (once; after that it is
    /// known). Fails while no node answers, with an error for which [`is_transient`]
    /// holds.
    pub(crate) async fn server(&self) -> Result<Server, Error> {
        self.server
            .get_or_try_init(|| async {
                let mut last = None;
                for node in self.nodes.iter() {
                    match ask(node).await {
                        Ok(server) => {
                            if !server.cluster && self.nodes.len() > 1 {
                                return Err(Error::config(format!(
                                    "REDIS_URL names {} nodes, but they are not a Redis \
                                     Cluster (cluster_enabled:0): give one URL for a single \
                                     Redis",
                                    self.nodes.len()
                                )));
                            }
                            return Ok(server);
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.expect("at least one node").into())
            })
            .await
            .copied()
    }

    /// A connection whose commands may take up to `response_timeout` (blocking reads need
    /// more than the default), trying `retries` reconnects per failed command. On one
    /// node it connects on first use and reconnects after a dropped connection or a
    /// Redis restart; until then its commands fail with errors for which
    /// [`is_transient`] holds, and the caller tries again.
    pub(crate) async fn connect(
        &self,
        response_timeout: Duration,
        retries: usize,
    ) -> Result<Conn, Error> {
        if !self.server().await?.cluster {
            return Ok(Conn::Node(ConnectionManager::new_lazy_with_config(
                self.nodes[0].clone(),
                config(response_timeout, retries),
            )?));
        }
        let mut builder = ClusterClientBuilder::new(self.infos.iter().cloned())
            .retries(retries.max(1) as u32)
            .max_retry_wait(2000);
        if let Some(roots) = &self.roots {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(roots.to_vec()),
            });
        }
        let client = builder.build().map_err(|e| {
            Error::config(format!(
                "REDIS_URL does not name a usable Redis Cluster: {e}"
            ))
        })?;
        Ok(Conn::Cluster(
            client.get_pending_async_connection_with_config(
                ClusterConfig::new()
                    .set_response_timeout(response_timeout)
                    .set_connection_timeout(Duration::from_secs(5)),
            ),
        ))
    }

    /// A connection to the one node that never reconnects by itself, for state kept on
    /// the connection (a `WATCH`): once it failed, the caller drops it and opens another.
    pub(crate) async fn session(
        &self,
        response_timeout: Duration,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        self.nodes[0]
            .get_multiplexed_async_connection_with_config(&plain_config(response_timeout))
            .await
    }

    /// A pub/sub connection to the first node that answers (on a cluster, any node hears
    /// every message).
    pub(crate) async fn pubsub(&self) -> Result<redis::aio::PubSub, Error> {
        let mut last = None;
        for node in self.nodes.iter() {
            match node.get_async_pubsub().await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one node").into())
    }

    /// A connection for one-off tools: fails at once when nothing answers.
    pub(crate) async fn connect_now(&self) -> Result<Conn, Error> {
        let conn = self.connect(Duration::from_secs(10), 0).await?;
        Ok(match conn {
            Conn::Node(_) => Conn::Node(
                ConnectionManager::new_with_config(
                    self.nodes[0].clone(),
                    config(Duration::from_secs(10), 0),
                )
                .await?,
            ),
            cluster => cluster,
        })
    }
}

/// `INFO` of one node: cluster or not, and the version.
async fn ask(node: &Client) -> redis::RedisResult<Server> {
    let mut conn = node
        .get_multiplexed_async_connection_with_config(&plain_config(Duration::from_secs(5)))
        .await?;
    let info: String = redis::cmd("INFO").query_async(&mut conn).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Ok(Server {
        cluster: field("cluster_enabled:").as_deref() == Some("1"),
        major: field("redis_version:")
            .and_then(|v| v.split('.').next()?.parse().ok())
            .unwrap_or(0),
    })
}

/// The CA file's certificates and the system's, as one PEM bundle (a CA given to the
/// `redis` crate replaces the system's roots; we want both).
fn trusted_roots(ca_file: &std::path::Path) -> Result<Vec<u8>, Error> {
    let mut bundle = std::fs::read(ca_file).map_err(|e| {
        Error::config(format!(
            "{TLS_CA_FILE}={ca_file:?} cannot be read ({e}); name a PEM file with the CA \
             certificate that signed your Redis server's certificate"
        ))
    })?;
    if !String::from_utf8_lossy(&bundle).contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::config(format!(
            "{TLS_CA_FILE}={ca_file:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    bundle.push(b'\n');
    for cert in rustls_native_certs::load_native_certs().certs {
        let pem = pem::Pem::new("CERTIFICATE", cert.as_ref().to_vec());
        bundle.extend_from_slice(pem::encode(&pem).as_bytes());
    }
    Ok(bundle)
}

/// Whether a failed command may succeed when tried again: the connection dropped, timed
/// out or could not be made, or Redis is loading, busy, failing over or full.
pub(crate) fn is_transient(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_connection_refusal()
        || matches!(
            error.code(),
            Some(
                "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY" | "OOM"
            )
        )
}

/// A connection of one's own that does not reconnect by itself.
fn plain_config(response_timeout: Duration) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout))
}

fn config(response_timeout: Duration, retries: usize) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(retries)
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    };
    // A password may also come as a query parameter.
    match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact("redis://u:secret@h:1/0"),
            "redis://u:***@h:1/0"
        );
        assert_eq!(super::redact("redis://h:1"), "redis://h:1");
        assert_eq!(
            super::redact("redis://h:1/0?db=2&password=secret"),
            "redis://h:1/0?db=2&password=***"
        );
    }

    #[test]
    fn a_worker_shows_no_password_in_debug() {
        let worker = crate::Worker::new().redis_url("redis://u:secret@h:1/0");
        let shown = format!("{worker:?}");
        assert!(
            !shown.contains("secret") && shown.contains("***"),
            "{shown}"
        );
        let config = crate::config::Config::resolve(&crate::config::Overrides {
            redis_url: Some(crate::config::RedisUrl("rediss://:secret@h:1".into())),
            ..Default::default()
        })
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
