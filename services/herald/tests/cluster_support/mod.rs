//! Helpers of the cluster tests: each worker's control apply histogram, read
//! from its `/metrics`, and the longest silence in the provider's requests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald_testkit::faults::Role;

/// One replica's `herald_control_apply_seconds`: how many control messages it
/// applied, how many within the bound, and their summed latency.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Applied {
    pub count: f64,
    pub within_bound: f64,
    pub sum_seconds: f64,
}

/// The metrics listeners of the packer and the two senders.
#[derive(Debug)]
pub struct ControlCounts {
    ports: BTreeMap<String, u16>,
    http: reqwest::Client,
}

impl ControlCounts {
    pub fn new(packer: u16, senders: [u16; 2]) -> Self {
        let ports = BTreeMap::from([
            (Role::Packer(0).replica_id(), packer),
            (Role::Sender(0).replica_id(), senders[0]),
            (Role::Sender(1).replica_id(), senders[1]),
        ]);
        Self {
            ports,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
        }
    }

    /// `HERALD_METRICS_LISTEN` of a worker (the api serves its own metrics).
    pub fn listen_for(&self, role: Role) -> Option<String> {
        let port = self.ports.get(&role.replica_id())?;
        Some(format!("127.0.0.1:{port}"))
    }

    /// Every replica's histogram now, with `bound` seconds as the bucket counted.
    async fn read_with(&self, bound: f64) -> BTreeMap<String, Applied> {
        let mut out = BTreeMap::new();
        for (replica, port) in &self.ports {
            let url = format!("http://127.0.0.1:{port}/metrics");
            let text = match self.http.get(&url).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            out.insert(replica.clone(), parse_applied(&text, bound));
        }
        out
    }

    pub async fn read(&self) -> BTreeMap<String, Applied> {
        self.read_with(super::CONTROL_APPLIED_WITHIN_SECONDS).await
    }

    /// Waits until every replica applied one more control message within `bound`
    /// seconds of its publication than in `before`. (A redelivered older message
    /// is applied late, so it cannot stand in for the new one.)
    pub async fn assert_each_applied_one_more(
        &self,
        before: &BTreeMap<String, Applied>,
        bound: f64,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let after = loop {
            let now = self.read_with(bound).await;
            let done = now.iter().all(|(replica, a)| {
                a.within_bound > before.get(replica).map_or(0.0, |b| b.within_bound)
            });
            if done {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "not every replica applied the control message within {bound} s: \
                 before {before:?}, now {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for (replica, now) in &after {
            let then = before.get(replica).copied().unwrap_or_default();
            println!(
                "{replica}: {} more applied, {:.3} s of latency in all",
                now.count - then.count,
                now.sum_seconds - then.sum_seconds
            );
        }
    }
}

/// The control apply histogram in a Prometheus text exposition (zeros when absent).
fn parse_applied(text: &str, bound: f64) -> Applied {
    let mut applied = Applied::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("herald_control_apply_seconds_") else {
            continue;
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if rest.starts_with("count") {
            applied.count = value;
        } else if rest.starts_with("sum") {
            applied.sum_seconds = value;
        } else if rest.starts_with("bucket") {
            let le = rest
                .split("le=\"")
                .nth(1)
                .and_then(|l| l.split('"').next())
                .and_then(|l| l.parse::<f64>().ok());
            if le.is_some_and(|le| (le - bound).abs() < 1e-9) {
                applied.within_bound = value;
            }
        }
    }
    applied
}

/// The longest time in `[from, to]` without a request start (counting from
/// `from`, so a stall right after it counts in full), and when it ended.
pub fn longest_silence(starts: &[Instant], from: Instant, to: Instant) -> (Duration, Instant) {
    let mut inside: Vec<Instant> = starts
        .iter()
        .copied()
        .filter(|s| *s > from && *s <= to)
        .collect();
    inside.sort();
    let mut previous = from;
    let mut longest = (Duration::ZERO, from);
    for start in inside.into_iter().chain(std::iter::once(to)) {
        if start - previous > longest.0 {
            longest = (start - previous, start);
        }
        previous = start;
    }
    longest
}
