//! A private Redis Cluster for tests: 3 masters and 3 replicas, each a `redis-server`
//! on a free loopback port (see [`RedisServer`]), joined with `redis-cli --cluster
//! create`. Its nodes keep nothing on disk but their cluster configuration (removed when
//! the cluster is dropped), and die with the test process.
//!
//! `cluster-node-timeout` is 3 s: shorter, and a busy 2-core machine makes the nodes
//! fail each other over when nobody asked.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::tls::TlsFiles;
use crate::{free_port, RedisServer};

/// A running local cluster.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    config_files: Vec<std::path::PathBuf>,
    /// With TLS: each node's TLS port, in the order of `nodes`.
    tls_ports: Vec<u16>,
}

/// One node as `CLUSTER NODES` shows it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a master (else a replica).
    pub master: bool,
    /// The port of its master, for a replica.
    pub master_port: Option<u16>,
    /// Whether the cluster considers it failed.
    pub failed: bool,
}

impl RedisCluster {
    /// Starts 6 nodes and makes them a cluster of 3 masters with one replica each;
    /// returns once every node sees all slots served.
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// [`RedisCluster::start`] with every node also serving TLS with `files` (the nodes
    /// talk to each other over TLS too; the plain ports stay for the test's checks).
    pub fn start_tls(files: &TlsFiles) -> Result<Self, String> {
        Self::start_with(Some(files))
    }

    fn start_with(tls: Option<&TlsFiles>) -> Result<Self, String> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let mut nodes = Vec::new();
        let mut config_files = Vec::new();
        let mut tls_ports = Vec::new();
        remove_leftovers();
        for _ in 0..6 {
            let name = format!(
                "redisaq-cluster-{}-{}",
                std::process::id(),
                STARTED.fetch_add(1, Ordering::SeqCst)
            );
            let (config, rdb) = (format!("{name}.conf"), format!("{name}.rdb"));
            config_files.push(std::env::temp_dir().join(&config));
            config_files.push(std::env::temp_dir().join(&rdb));
            // A replica keeps what its master sends in its RDB file: a file of its own, or
            // every server started later in the same directory would load its keys.
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &config,
                "--dbfilename",
                &rdb,
                "--cluster-node-timeout",
                "3000",
            ]
            .map(String::from)
            .to_vec();
            if let Some(files) = tls {
                let port = free_port();
                tls_ports.push(port);
                args.extend(files.server_args(port));
                args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
            }
            nodes.push(RedisServer::start_with(
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )?);
        }
        let cluster = RedisCluster {
            nodes,
            config_files,
            tls_ports,
        };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run redis-cli ({e}); it comes with redis-server"))?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        cluster.wait_healthy(Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// Waits until every node that is up reports the cluster `ok` with all slots served
    /// and the same view of who is master, and every master has a replica in sync.
    pub fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        self.wait(limit, true)
    }

    /// [`RedisCluster::wait_healthy`] without the replicas: every slot served.
    pub fn wait_serving(&self, limit: Duration) -> Result<(), String> {
        self.wait(limit, false)
    }

    fn wait(&self, limit: Duration, replicas: bool) -> Result<(), String> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < limit {
            match self.health(replicas) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("the cluster did not become healthy: {last}"))
    }

    fn health(&self, replicas: bool) -> Result<(), String> {
        let mut views = Vec::new();
        for node in &self.nodes {
            let Ok(mut conn) = redis::Client::open(node.url()).and_then(|c| c.get_connection())
            else {
                continue; // a node the test stopped
            };
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut conn)
                .map_err(|e| e.to_string())?;
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return Err(format!(
                    "node {}: {}",
                    node.port(),
                    info.replace("\r\n", " ")
                ));
            }
            let replication: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut conn)
                .map_err(|e| e.to_string())?;
            if replicas
                && replication.contains("role:master")
                && !replication.contains("state=online")
            {
                return Err(format!("master {} has no replica in sync yet", node.port()));
            }
            let mut masters: Vec<u16> = self
                .nodes_seen_by(node.port())?
                .into_iter()
                .filter(|n| n.master && !n.failed)
                .map(|n| n.port)
                .collect();
            masters.sort();
            views.push(masters);
        }
        if views.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("nodes disagree on the masters: {views:?}"));
        }
        Ok(())
    }

    /// The nodes as the node on `port` sees them.
    pub fn nodes_seen_by(&self, port: u16) -> Result<Vec<Node>, String> {
        let mut conn = redis::Client::open(Self::node_url(port))
            .and_then(|c| c.get_connection())
            .map_err(|e| e.to_string())?;
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut conn)
            .map_err(|e| e.to_string())?;
        let port_of = |address: &str| -> Option<u16> {
            address.split('@').next()?.rsplit(':').next()?.parse().ok()
        };
        let ids: Vec<(String, u16)> = text
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let id = fields.next()?.to_string();
                Some((id, port_of(fields.next()?)?))
            })
            .collect();
        Ok(text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                Some(Node {
                    port: port_of(fields.get(1)?)?,
                    master: flags.contains("master"),
                    master_port: fields
                        .get(3)
                        .and_then(|master| ids.iter().find(|(id, _)| id == master))
                        .map(|(_, p)| *p),
                    failed: flags.contains("fail") && !flags.contains("fail?"),
                })
            })
            .collect())
    }

    /// The masters' ports, as the first node that answers sees them.
    pub fn masters(&self) -> Vec<u16> {
        for node in &self.nodes {
            if let Ok(nodes) = self.nodes_seen_by(node.port()) {
                return nodes
                    .into_iter()
                    .filter(|n| n.master && !n.failed)
                    .map(|n| n.port)
                    .collect();
            }
        }
        Vec::new()
    }

    /// The replicas' ports.
    pub fn replicas(&self) -> Vec<u16> {
        let masters = self.masters();
        self.nodes
            .iter()
            .map(RedisServer::port)
            .filter(|p| !masters.contains(p))
            .collect()
    }

    /// Every node's URL, comma-separated: what `REDIS_URL` names for a cluster.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// With [`RedisCluster::start_tls`]: every node's `rediss://` URL, comma-separated.
    pub fn tls_url(&self) -> String {
        self.tls_ports
            .iter()
            .map(|port| format!("rediss://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URL of one node.
    pub fn node_url(port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let port = *self.masters().first()?;
        let mut conn = redis::Client::open(Self::node_url(port))
            .and_then(|c| c.get_connection())
            .ok()?;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .ok()?;
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn).ok()?;
        slots.iter().find_map(|range| {
            let redis::Value::Array(fields) = range else {
                return None;
            };
            let number = |v: &redis::Value| match v {
                redis::Value::Int(i) => Some(*i),
                _ => None,
            };
            let (start, end) = (number(fields.first()?)?, number(fields.get(1)?)?);
            if !(start..=end).contains(&i64::from(slot)) {
                return None;
            }
            let redis::Value::Array(master) = fields.get(2)? else {
                return None;
            };
            number(master.get(1)?).map(|p| p as u16)
        })
    }

    /// A cluster connection for the test's own checks.
    pub fn connection(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::builder(self.nodes.iter().map(RedisServer::url))
            .retries(20)
            .build()
            .and_then(|c| c.get_connection())
            .expect("connect to the test cluster")
    }

    /// Starts the node on `port` again (after [`RedisCluster::kill`]) with its cluster
    /// configuration: it rejoins, as a replica if another node took its place.
    pub fn restart(&self, port: u16) -> Result<(), String> {
        match self.nodes.iter().find(|n| n.port() == port) {
            Some(node) => node.restart(),
            None => Err(format!("no node on port {port}")),
        }
    }

    /// Kills (SIGKILL) the node on `port`; it stays down.
    pub fn kill(&self, port: u16) {
        if let Some(node) = self.nodes.iter().find(|n| n.port() == port) {
            node.stop();
        }
    }
}

/// Removes the files of clusters whose test process is gone (a cluster kept in a
/// `static` is never dropped).
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("redisaq-cluster-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear(); // stops them
        for file in &self.config_files {
            let _ = std::fs::remove_file(file);
        }
    }
}
