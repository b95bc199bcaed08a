//! A private nats-server running the repository's authenticated config
//! ([`AuthNatsServer`]).

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use crate::free_port;

/// A private nats-server running the repository's `nats/nats-server.conf` (one
/// user per service, allow-list permissions), on free ports, with its own store.
#[derive(Debug)]
pub struct AuthNatsServer {
    pub port: u16,
    pub monitor_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The password every user of [`AuthNatsServer`] gets (a valid config token).
pub fn nats_password(user: &str) -> String {
    format!("pw-{user}-test")
}

impl AuthNatsServer {
    /// Copies `nats/` to a temp dir, points `listen`, `http` and `store_dir` at
    /// free ports and the temp dir, and starts the server with the
    /// `HERALD_*_NATS_PASSWORD` variables set.
    pub async fn start() -> Self {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nats");
        let dir = tempfile::Builder::new()
            .prefix("herald-nats-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let monitor_port = free_port();
        let auth = std::fs::read_to_string(source.join("auth.conf")).expect("nats/auth.conf");
        std::fs::write(dir.path().join("auth.conf"), auth).expect("write auth.conf");
        let config = std::fs::read_to_string(source.join("nats-server.conf"))
            .expect("nats/nats-server.conf");
        let store = dir.path().join("jetstream");
        let mut rewritten = String::new();
        for line in config.lines() {
            let trimmed = line.trim_start();
            let line = if trimmed.starts_with("listen:") {
                format!("listen: 127.0.0.1:{port}")
            } else if trimmed.starts_with("http:") {
                format!("http: 127.0.0.1:{monitor_port}")
            } else if trimmed.starts_with("store_dir:") {
                format!("  store_dir: \"{}\"", store.display())
            } else if trimmed.starts_with("lame_duck_duration:") {
                // Irrelevant for a test server and slows its shutdown.
                String::new()
            } else {
                line.to_owned()
            };
            rewritten.push_str(&line);
            rewritten.push('\n');
        }
        for (from, to) in [
            (format!("listen: 127.0.0.1:{port}"), "listen"),
            (format!("http: 127.0.0.1:{monitor_port}"), "http"),
            (format!("store_dir: \"{}\"", store.display()), "store_dir"),
        ] {
            assert!(
                rewritten.contains(&from),
                "nats-server.conf has no `{to}` line to rewrite"
            );
        }
        std::fs::write(dir.path().join("nats-server.conf"), rewritten).expect("write config");
        let mut server = Self {
            port,
            monitor_port,
            dir,
            child: None,
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log");
        let err = log.try_clone().expect("log handle");
        let mut command = std::process::Command::new(crate::nats_server_binary());
        command
            .arg("-c")
            .arg(self.dir.path().join("nats-server.conf"))
            .stdout(log)
            .stderr(err);
        for user in ["API", "PACKER", "SENDER", "OPERATOR"] {
            command.env(
                format!("HERALD_{user}_NATS_PASSWORD"),
                nats_password(&user.to_lowercase()),
            );
        }
        self.child = Some(command.spawn().expect("nats-server starts"));
        let client = reqwest::Client::new();
        let health = format!("http://127.0.0.1:{}/healthz", self.monitor_port);
        let child = self.child.as_mut().expect("child");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nats-server exited at once ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
                );
            }
            if client
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server with the repo config did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for AuthNatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
