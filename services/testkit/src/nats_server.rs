//! A private nats-server with JetStream for one test ([`NatsServer`]).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::free_port;

/// A private nats-server with JetStream, on a free port, in a temp directory.
/// One node of a [`NatsCluster`](crate::NatsCluster) is one of these with its cluster flags.
#[derive(Debug)]
pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    binary: PathBuf,
    /// Flags after the common ones (a cluster node's name and routes).
    extra_args: Vec<String>,
}

/// The nats-server the tests run: `HERALD_TEST_NATS_SERVER`, else
/// `/usr/sbin/nats-server`, else the one on `PATH`.
pub fn nats_server_binary() -> PathBuf {
    std::env::var("HERALD_TEST_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let fallback = PathBuf::from("/usr/sbin/nats-server");
            if fallback.exists() {
                fallback
            } else {
                PathBuf::from("nats-server")
            }
        })
}

impl NatsServer {
    pub async fn start() -> Self {
        Self::start_with(nats_server_binary(), free_port(), Vec::new()).await
    }

    /// Starts `binary` on `port` with JetStream in a fresh temp directory, plus
    /// `extra_args`, and returns once it accepts connections.
    pub async fn start_with(binary: PathBuf, port: u16, extra_args: Vec<String>) -> Self {
        let mut server = Self {
            port,
            dir: tempfile::Builder::new()
                .prefix("herald-nats-")
                .tempdir()
                .expect("temp dir"),
            child: None,
            binary,
            extra_args,
        };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's log (all its incarnations), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Starts the server again on the same port and store.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("nats log file");
        let err = log.try_clone().expect("log handle");
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("store"))
            .args(&self.extra_args)
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "nats-server {} starts (is it on PATH?): {e}",
                    self.binary.display()
                )
            });
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                // JetStream needs a moment after the port opens.
                tokio::time::sleep(Duration::from_millis(150)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nats-server did not start on port {}: {}",
            self.port,
            self.log()
        );
    }

    /// Stops the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
