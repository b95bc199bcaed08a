//! A private Postgres cluster that a test can stop and start ([`PgCluster`]).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::free_port;

/// True when this process runs as root, which Postgres refuses to run as.
fn running_as_root() -> bool {
    // /proc/self belongs to the effective uid; no unsafe geteuid needed.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The unprivileged account Postgres runs as when the tests run as root.
const PG_OS_USER: &str = "postgres";

fn pg_binary(name: &str) -> PathBuf {
    for dir in ["/usr/local/bin", "/usr/lib/postgresql/15/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    PathBuf::from(name)
}

/// A command for a Postgres tool, run as [`PG_OS_USER`] when we are root.
fn pg_command(tool: &str) -> Command {
    let binary = pg_binary(tool);
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", PG_OS_USER, "--"]).arg(binary);
        command
    } else {
        Command::new(binary)
    }
}

async fn run_checked(mut command: Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{what}: could not run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A throwaway Postgres cluster: `initdb` into a temp directory, served on a free
/// port of 127.0.0.1 with trust auth and `fsync=off`. Dropping it stops it.
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    dir: tempfile::TempDir,
    running: bool,
}

impl PgCluster {
    /// Initialises and starts a new cluster.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herald-pg-")
            .tempdir()
            .expect("temp dir");
        if running_as_root() {
            // Postgres will not run as root: hand the directory to its own account.
            let mut chown = Command::new("chown");
            chown.arg(format!("{PG_OS_USER}:")).arg(dir.path());
            run_checked(chown, "chown of the cluster directory").await;
        }
        let mut initdb = pg_command("initdb");
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run_checked(initdb, "initdb").await;
        let mut cluster = Self {
            port: free_port(),
            dir,
            running: false,
        };
        cluster.start_again().await;
        cluster
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server URL without a database, e.g. `postgres://postgres@127.0.0.1:5999`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// The URL of one database on this cluster.
    pub fn database_url(&self, database: &str) -> String {
        format!("{}/{database}", self.url())
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut command = pg_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-t", "30", action]);
        command
    }

    /// Starts the (stopped) cluster on the same port and data directory, and
    /// returns once it accepts connections.
    pub async fn start_again(&mut self) {
        assert!(!self.running, "the cluster is already running");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let mut command = self.pg_ctl("start");
        command
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .arg("-o")
            .arg(options);
        run_checked(command, "pg_ctl start").await;
        self.running = true;
    }

    /// Stops the cluster ("fast" shutdown: sessions are terminated at once, as in
    /// a restart of the database server) and waits until it is down.
    pub async fn stop(&mut self) {
        if !self.running {
            return;
        }
        let mut command = self.pg_ctl("stop");
        command.args(["-m", "fast"]);
        run_checked(command, "pg_ctl stop").await;
        self.running = false;
    }

    /// The server's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            // Immediate: nobody needs this data any more.
            let mut command = std::process::Command::new(if running_as_root() {
                PathBuf::from("runuser")
            } else {
                pg_binary("pg_ctl")
            });
            if running_as_root() {
                command
                    .args(["-u", PG_OS_USER, "--"])
                    .arg(pg_binary("pg_ctl"));
            }
            let _ = command
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-w", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
