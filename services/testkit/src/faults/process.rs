//! The real `herald` binary as a separate OS process that a test can `kill -9`
//! and restart ([`HeraldProcess`]), with its environment ([`HeraldEnv`]).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use herald_core::config::CommonConfig;

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
        clear_inherited_settings(&mut command);
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
        clear_inherited_settings(&mut command);
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

/// Removes every Herald setting the test process itself has from `command`'s
/// environment (`HERALD_*`, `NATS_*`, `DATABASE_URL`, `RUST_LOG`), so a child
/// runs with exactly the settings the test gives it.
fn clear_inherited_settings(command: &mut std::process::Command) {
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
}
