//! Fault injection for the reliability tests: a private Postgres cluster that can
//! be stopped and started ([`PgCluster`]), the real `herald` binary as separate OS
//! processes that can be `kill -9`ed and restarted ([`HeraldProcess`]), a private
//! nats-server running the repository's authenticated config ([`AuthNatsServer`]),
//! and a whole deployment of such processes ([`ProcessStack`]).
//!
//! Everything here is private to one test: its own data directory, its own ports,
//! its own log files. The shared Postgres and NATS of the machine are never
//! touched, so a test may stop "its" servers freely.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use herald_core::bus::Bus;
use herald_core::config::CommonConfig;
use herald_core::lifecycle::Status;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::Command;
use uuid::Uuid;

use crate::{ProviderDouble, free_port};

/// Waits until each named durable exists on the control stream: a new durable
/// starts at the next message, so control published before it would be missed.
pub async fn wait_for_control_durables(bus: &Bus, names: &[String]) {
    wait_until(
        "every replica's control consumer",
        Duration::from_secs(30),
        || async {
            let stream = bus.js.get_stream(&bus.streams.control).await.ok()?;
            for name in names {
                stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
                    .await
                    .ok()?;
            }
            Some(())
        },
    )
    .await;
}

/// Polls `check` every 50 ms until it yields a value, or panics with `what` after
/// `timeout`. The one bounded wait every fault test uses instead of sleeping.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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

/// Where the `herald` binary is: `HERALD_BIN`, else `target/debug/herald` of this
/// workspace. Building it is the caller's job; tests of the `herald` package
/// should pass `env!("CARGO_BIN_EXE_herald")` instead.
pub fn herald_binary() -> PathBuf {
    if let Ok(path) = std::env::var("HERALD_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug/herald")
}

/// The environment of one `herald` process. Every setting of Herald is an
/// environment variable, so this is its whole configuration.
#[derive(Debug, Clone, Default)]
pub struct HeraldEnv {
    vars: BTreeMap<String, String>,
}

impl HeraldEnv {
    /// Connection settings plus fast timings for tests: 3 s leases, a 500 ms
    /// sweep, 50 ms retry base, 200 ms relay and scheduler periods.
    pub fn for_test(database_url: &str, nats_url: &str, tag: &str) -> Self {
        Self::default()
            .set("DATABASE_URL", database_url)
            .set("NATS_URL", nats_url)
            .set("HERALD_SUBJECT_PREFIX", &format!("f{tag}."))
            .set("HERALD_STREAM_PREFIX", &format!("F{tag}"))
            .set("HERALD_DB_MAX_CONNECTIONS", "8")
            .set("HERALD_LEASE_SECONDS", "3")
            .set("HERALD_SWEEP_INTERVAL_MS", "500")
            .set("HERALD_STALL_SECONDS", "3")
            .set("HERALD_RETRY_BASE_MS", "50")
            .set("HERALD_RETRY_MAX_MS", "1000")
            .set("HERALD_PROVIDER_TIMEOUT_MS", "5000")
            .set("HERALD_RELAY_INTERVAL_MS", "200")
            .set("HERALD_SCHEDULER_INTERVAL_MS", "200")
            .set("HERALD_STATUS_TTL_MS", "1000")
            .set("HERALD_LOG", "info")
    }

    /// Sets one variable (builder style).
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.vars.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// The same settings as in-process [`CommonConfig`], for test-side connections.
    pub fn common(&self) -> CommonConfig {
        let mut common = CommonConfig::local_defaults();
        if let Some(url) = self.get("DATABASE_URL") {
            common.database_url = url.to_owned();
        }
        if let Some(url) = self.get("NATS_URL") {
            common.nats_url = url.to_owned();
        }
        common.subject_prefix = self.get("HERALD_SUBJECT_PREFIX").unwrap_or("").to_owned();
        common.stream_prefix = self
            .get("HERALD_STREAM_PREFIX")
            .unwrap_or("HERALD")
            .to_owned();
        common.nats_user = self.get("NATS_USER").map(str::to_owned);
        common.nats_password = self.get("NATS_PASSWORD").map(str::to_owned);
        common.db_max_connections = 4;
        common
    }
}

/// One `herald <subcommand>` OS process. Its stdout and stderr go to a log file
/// that survives restarts (appended to). Dropping it kills it.
#[derive(Debug)]
pub struct HeraldProcess {
    name: String,
    binary: PathBuf,
    args: Vec<String>,
    env: HeraldEnv,
    log_path: PathBuf,
    child: Option<Child>,
    /// Owns the log directory when the process made its own.
    _log_dir: Option<tempfile::TempDir>,
}

impl HeraldProcess {
    /// Spawns `binary args...` with exactly `env` for Herald's settings (variables
    /// of the test process that Herald reads are removed first, so nothing leaks
    /// in). `name` names the log file in `log_dir`, or in a temp dir of its own.
    pub fn spawn(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: HeraldEnv,
        log_dir: Option<&Path>,
    ) -> Self {
        let (dir, owned) = match log_dir {
            Some(dir) => (dir.to_owned(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("herald-proc-")
                    .tempdir()
                    .expect("temp dir");
                (temp.path().to_owned(), Some(temp))
            }
        };
        let mut process = Self {
            name: name.to_owned(),
            binary: binary.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            log_path: dir.join(format!("{name}.log")),
            child: None,
            _log_dir: owned,
        };
        process.launch();
        process
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let err = log.try_clone().expect("log handle");
        let mut command = std::process::Command::new(&self.binary);
        command.args(&self.args);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("HERALD_")
                || key.starts_with("NATS_")
                || key == "DATABASE_URL"
                || key == "RUST_LOG"
            {
                command.env_remove(key.as_ref());
            }
        }
        command
            .envs(&self.env.vars)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "could not start {} ({}): {e}; build it first (cargo build -p herald)",
                self.name,
                self.binary.display()
            )
        });
        self.child = Some(child);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn env(&self) -> &HeraldEnv {
        &self.env
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to `timeout` for the process to exit by itself and returns its
    /// exit status; `None` if it still runs.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no shutdown hook, no drain, no final ack. Waits for the exit.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (`SIGSTOP`): it holds its connections but answers
    /// nothing until [`HeraldProcess::sigcont`].
    pub fn sigstop(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen process run again (`SIGCONT`).
    pub fn sigcont(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the process runs").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Starts the process again with the same command and environment (killing it
    /// first if it still runs).
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Everything the process (and its earlier incarnations) wrote.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One field of `/proc/<pid>/status` that is a size in KiB (`VmHWM`, `VmRSS`).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The peak resident set size of a live process (`VmHWM`), in KiB. Linux only.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// The current resident set size of a live process (`VmRSS`), in KiB. Linux only.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

impl HeraldProcess {
    /// This process's peak resident set size so far ([`peak_rss_kib`]), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.pid()?)
    }

    /// This process's current resident set size ([`rss_kib`]), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }
}

impl HeraldEnv {
    /// Runs a one-shot `binary args...` (e.g. `herald tokens create`) with exactly
    /// this environment for Herald's settings, as [`HeraldProcess`] does, and
    /// returns its output. Panics if it cannot start or exits unsuccessfully.
    pub fn run_to_completion(&self, binary: &Path, args: &[&str]) -> std::process::Output {
        let mut command = std::process::Command::new(binary);
        command.args(args);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("HERALD_")
                || key.starts_with("NATS_")
                || key == "DATABASE_URL"
                || key == "RUST_LOG"
            {
                command.env_remove(key.as_ref());
            }
        }
        let output = command
            .envs(&self.vars)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("could not run {} {args:?}: {e}", binary.display()));
        assert!(
            output.status.success(),
            "{} {args:?} failed ({}): {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

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

/// A whole Herald deployment as OS processes: one api, N packers, M senders, on
/// a private [`PgCluster`] and a NATS server the caller owns (so it can stop it).
#[derive(Debug)]
pub struct ProcessStack {
    pub pg: PgCluster,
    /// The settings shared by every process (before per-role overrides).
    pub env: HeraldEnv,
    pub api: HeraldProcess,
    pub packers: Vec<HeraldProcess>,
    pub senders: Vec<HeraldProcess>,
    /// The tenant's HTTP client; `ProcessStack` derefs to it.
    pub client: crate::ApiClient,
    /// A test-side view of the same prefixes and servers (for SQL and streams).
    pub common: CommonConfig,
    /// Keeps every process's log file until the stack is dropped.
    _log_dir: tempfile::TempDir,
}

/// Which process a [`ProcessStack`] is configuring, for per-role settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Packer(usize),
    Sender(usize),
}

impl Role {
    pub fn replica_id(self) -> String {
        match self {
            Role::Api => "api-0".into(),
            Role::Packer(i) => format!("packer-{i}"),
            Role::Sender(i) => format!("sender-{i}"),
        }
    }
    pub fn subcommand(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Packer(_) => "packer",
            Role::Sender(_) => "sender",
        }
    }
}

impl ProcessStack {
    /// Starts a cluster, migrates it, then the api, `packers` packers and
    /// `senders` senders, and waits until the api is ready and every worker's
    /// control consumer exists. `configure` adjusts each process's environment.
    pub async fn start(
        binary: &Path,
        nats_url: &str,
        packers: usize,
        senders: usize,
        configure: impl Fn(Role, HeraldEnv) -> HeraldEnv,
    ) -> Self {
        crate::init_test_logging();
        let pg = PgCluster::start().await;
        let tag = Uuid::new_v4().simple().to_string()[..10].to_owned();
        let env = HeraldEnv::for_test(&pg.database_url("herald"), nats_url, &tag);
        // The test side sees what the processes see (configure may change the
        // prefixes), with full rights on an authenticated server.
        let api_env = configure(Role::Api, env.clone());
        let mut common = api_env.common();
        if api_env.get("NATS_USER").is_some() {
            common.nats_user = Some("operator".into());
            common.nats_password = Some(nats_password("operator"));
        }
        herald_core::db::migrate(&common)
            .await
            .expect("the private cluster migrates");
        let token =
            herald_core::auth::create_token(&herald_core::db::pool(&common).expect("pool"), "acme")
                .await
                .expect("token")
                .1;
        let log_dir = tempfile::Builder::new()
            .prefix("herald-stack-")
            .tempdir()
            .expect("temp dir");
        let listen = format!("127.0.0.1:{}", free_port());
        let spawn = |role: Role| {
            let env = configure(role, env.clone())
                .set("HERALD_REPLICA_ID", &role.replica_id())
                .set("HERALD_LISTEN", &listen);
            HeraldProcess::spawn(
                &role.replica_id(),
                binary,
                &[role.subcommand()],
                env,
                Some(log_dir.path()),
            )
        };
        let api = spawn(Role::Api);
        let packers = (0..packers).map(|i| spawn(Role::Packer(i))).collect();
        let senders = (0..senders).map(|i| spawn(Role::Sender(i))).collect();
        let stack = Self {
            pg,
            env,
            api,
            packers,
            senders,
            client: crate::ApiClient {
                base_url: format!("http://{listen}"),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .expect("http client"),
                token,
            },
            common,
            _log_dir: log_dir,
        };
        stack.wait_until_ready().await;
        stack
    }

    /// Waits for `/readyz` (Postgres and JetStream up, streams provisioned) and
    /// for every worker's control consumer.
    pub async fn wait_until_ready(&self) {
        let url = format!("{}/readyz", self.base_url);
        wait_until("the api to be ready", Duration::from_secs(30), || async {
            let response = self.http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        self.wait_for_control_consumers().await;
    }

    /// Waits until every packer and sender replica has its control consumer, so
    /// a control message published now reaches all of them.
    pub async fn wait_for_control_consumers(&self) {
        let bus = self.bus().await;
        let names: Vec<String> = self
            .packers
            .iter()
            .map(|p| format!("ctl_packer_{}", p.name()))
            .chain(
                self.senders
                    .iter()
                    .map(|s| format!("ctl_sender_{}", s.name())),
            )
            .collect();
        wait_for_control_durables(&bus, &names).await;
    }

    /// A test-side NATS connection with the stack's prefixes.
    pub async fn bus(&self) -> Bus {
        Bus::connect(&self.common, "herald-fault-test")
            .await
            .expect("test nats client")
    }

    /// A test-side Postgres pool on the private cluster.
    pub fn pool(&self) -> PgPool {
        herald_core::db::pool(&self.common).expect("pool")
    }

    /// Every process log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for process in std::iter::once(&self.api)
            .chain(&self.packers)
            .chain(&self.senders)
        {
            let log = process.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("==== {} (last 40 lines) ====\n", process.name()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Polls until the campaign has `status`; panics with the process logs after
    /// `timeout`.
    pub async fn wait_for_status(
        &self,
        campaign: Uuid,
        status: Status,
        timeout: Duration,
    ) -> Value {
        self.client
            .wait_for_status_or(campaign, status, timeout, || self.logs())
            .await
    }

    /// The checks every fault scenario ends with: the campaign completed exactly
    /// once, every recipient's fate is accounted for and explained
    /// ([`crate::assert_every_fate_accounted`]), and the event history is `seq`
    /// 1..n without gaps. Returns the campaign body.
    pub async fn assert_settled(&self, campaign: Uuid, total: usize) -> Value {
        self.wait_for_status(campaign, Status::Completed, Duration::from_secs(120))
            .await;
        let pool = self.pool();
        let body = crate::assert_every_fate_accounted(&self.client, &pool, campaign).await;
        assert_eq!(
            body["counters"]["total"].as_u64(),
            Some(total as u64),
            "{body}"
        );
        let events = self.events(campaign).await;
        for (i, event) in events.iter().enumerate() {
            assert_eq!(
                event["seq"].as_i64(),
                Some(i as i64 + 1),
                "event history has a gap or a duplicate: {events:?}"
            );
        }
        let completions = events.iter().filter(|e| e["type"] == "completed").count();
        assert_eq!(completions, 1, "completed exactly once: {events:?}");
        assert_eq!(
            events.last().map(|e| e["type"].clone()),
            Some(json!("completed")),
            "nothing happens after completion"
        );
        pool.close().await;
        body
    }
}

/// Recipients that reached the provider more than once, with their request count.
pub fn repeated_keys(provider: &ProviderDouble) -> BTreeMap<String, u32> {
    provider
        .per_key()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect()
}

impl std::ops::Deref for ProcessStack {
    type Target = crate::ApiClient;
    fn deref(&self) -> &crate::ApiClient {
        &self.client
    }
}
