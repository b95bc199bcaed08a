//! Settings shared by every service. Each one is an environment variable and a flag.

use std::fmt;

/// Connection and naming settings that every `herald` subcommand needs.
#[derive(Clone, clap::Args)]
pub struct CommonConfig {
    /// Postgres connection URL. The database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/herald"
    )]
    pub database_url: String,

    /// Maximum Postgres connections in this process's pool.
    #[arg(long, env = "HERALD_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// NATS server URL(s), comma separated (for example the nodes of a
    /// cluster: `nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222`).
    /// The client connects to one of them and reconnects to the others.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// NATS user name (see nats/auth.conf for one user per service).
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,

    /// NATS password for NATS_USER.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,

    /// This replica's id: names its control consumer and its leases. Defaults to
    /// the host name plus a random suffix, so two processes never share one.
    #[arg(long, env = "HERALD_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Prefix put before every subject: `staging` (or `staging.`) gives
    /// `staging.campaigns.pack`. Empty by default. Each installation sharing a
    /// NATS server needs its own, and its own HERALD_STREAM_PREFIX.
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = "")]
    pub subject_prefix: String,

    /// Prefix of the JetStream stream names (`<prefix>_EVENTS`, ...).
    #[arg(long, env = "HERALD_STREAM_PREFIX", default_value = "HERALD")]
    pub stream_prefix: String,

    /// JetStream stream replicas (3 on a 3-node cluster).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// Take over streams stamped with another installation's id (that
    /// installation's database is gone). Set it for one api start, never for good.
    #[arg(long, env = "HERALD_ADOPT_STREAMS", default_value_t = false)]
    pub adopt_streams: bool,

    /// Address for `/metrics` in packer and sender processes (the api serves
    /// `/metrics` on its own listener). Unset: no listener.
    #[arg(long, env = "HERALD_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl CommonConfig {
    /// Serves `/metrics` on `metrics_listen`, if set, until shutdown.
    pub fn spawn_metrics_listener(&self, shutdown: &crate::CancellationToken) {
        if let Some(addr) = self.metrics_listen {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(error) = crate::telemetry::serve_metrics(addr, shutdown).await {
                    tracing::error!(%addr, error = %format!("{error:#}"), "metrics listener failed");
                }
            });
        }
    }

    /// Settings for this machine's local Postgres and NATS, as documented defaults.
    pub fn local_defaults() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/herald".into(),
            db_max_connections: 16,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: None,
            nats_password: None,
            replica_id: None,
            subject_prefix: String::new(),
            stream_prefix: "HERALD".into(),
            stream_replicas: 1,
            adopt_streams: false,
            metrics_listen: None,
        }
    }

    /// The replica id, made safe for use in consumer names.
    pub fn replica_id(&self) -> String {
        let raw = match &self.replica_id {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => {
                let host = std::env::var("HOSTNAME")
                    .ok()
                    .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "herald".into());
                let suffix = uuid::Uuid::new_v4().simple().to_string();
                format!("{host}-{}", &suffix[..8])
            }
        };
        sanitize_name(&raw)
    }
}

/// Parses `NATS_URL`: one server or a comma-separated list (blanks around the
/// commas are ignored). Each entry is a `nats://host:port` URL or `host:port`.
pub fn parse_nats_servers(list: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let servers = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|server| {
            server.parse::<async_nats::ServerAddr>().map_err(|error| {
                anyhow::anyhow!(
                    "invalid NATS server {:?} in NATS_URL: {error}",
                    redact_url(server)
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!servers.is_empty(), "NATS_URL lists no server");
    Ok(servers)
}

/// Keeps `[A-Za-z0-9_-]` and replaces everything else, as NATS consumer names need.
pub fn sanitize_name(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// Hides the password part of a URL (or of each URL of a comma-separated
/// list), for logs.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for CommonConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommonConfig")
            .field("database_url", &redact_url(&self.database_url))
            .field("db_max_connections", &self.db_max_connections)
            .field("nats_url", &redact_url(&self.nats_url))
            .field("nats_user", &self.nats_user)
            .field("nats_password", &self.nats_password.as_ref().map(|_| "***"))
            .field("replica_id", &self.replica_id)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream_prefix", &self.stream_prefix)
            .field("stream_replicas", &self.stream_replicas)
            .field("adopt_streams", &self.adopt_streams)
            .field("metrics_listen", &self.metrics_listen)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_hide_the_password_but_keep_the_rest() {
        assert_eq!(
            redact_url("postgres://herald:s3cret@db:5432/herald"),
            "postgres://herald:***@db:5432/herald"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[test]
    fn a_comma_separated_nats_url_yields_every_server_in_order() {
        let servers =
            parse_nats_servers("nats://127.0.0.1:4222, nats://127.0.0.1:4223 ,127.0.0.1:4224,")
                .expect("a list parses");
        let ports: Vec<u16> = servers.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        let same_twice = parse_nats_servers("nats://127.0.0.1:4222,nats://127.0.0.1:4222")
            .expect("the same server twice parses");
        assert_eq!(same_twice.len(), 2);
    }

    #[test]
    fn a_bad_entry_in_the_nats_url_list_is_named_without_its_password() {
        let error = parse_nats_servers("nats://a:4222,nats://user:s3cret@b:notaport")
            .expect_err("a bad port fails")
            .to_string();
        assert!(error.contains("user:***@b:notaport"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        assert!(parse_nats_servers(" , ").is_err(), "an empty list fails");
    }

    #[test]
    fn every_url_of_a_list_is_redacted() {
        assert_eq!(
            redact_url("nats://u:p@a:4222,nats://u:p@b:4222"),
            "nats://u:***@a:4222,nats://u:***@b:4222"
        );
    }

    #[test]
    fn replica_ids_are_safe_consumer_names() {
        let mut cfg = CommonConfig::local_defaults();
        cfg.replica_id = Some("sender.a b/1".into());
        assert_eq!(cfg.replica_id(), "sender_a_b_1");
        cfg.replica_id = None;
        assert!(
            cfg.replica_id()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }
}
