//! Herald's names on the bus: subjects (with `HERALD_SUBJECT_PREFIX`) and stream
//! names (with `HERALD_STREAM_PREFIX`).

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// `prefix` is a subject token or tokens, with or without the trailing dot:
    /// `staging` and `staging.` both give `staging.campaigns.pack`.
    pub fn new(prefix: &str) -> Self {
        let prefix = prefix.trim();
        let prefix = if prefix.is_empty() || prefix.ends_with('.') {
            prefix.to_owned()
        } else {
            format!("{prefix}.")
        };
        Self { prefix }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn events(&self, campaign: Uuid) -> String {
        format!("{}campaigns.events.{campaign}", self.prefix)
    }
    pub fn events_all(&self) -> String {
        format!("{}campaigns.events.>", self.prefix)
    }
    pub fn control(&self, campaign: Uuid) -> String {
        format!("{}campaigns.control.{campaign}", self.prefix)
    }
    pub fn control_all(&self) -> String {
        format!("{}campaigns.control.>", self.prefix)
    }
    pub fn pack(&self) -> String {
        format!("{}campaigns.pack", self.prefix)
    }
    pub fn send(&self) -> String {
        format!("{}campaigns.send", self.prefix)
    }
    pub fn tracked(&self, campaign: Uuid) -> String {
        format!("{}campaigns.tracked.{campaign}", self.prefix)
    }
    pub fn tracked_all(&self) -> String {
        format!("{}campaigns.tracked.>", self.prefix)
    }
    /// `campaigns.presence.<service>.<replica>`: a replica's heartbeat (core NATS).
    pub fn presence(&self, service: &str, replica: &str) -> String {
        format!("{}campaigns.presence.{service}.{replica}", self.prefix)
    }
    pub fn presence_all(&self) -> String {
        format!("{}campaigns.presence.>", self.prefix)
    }
    /// `campaigns.acks.<campaign>`: replicas' acks of its control messages (core NATS).
    pub fn acks(&self, campaign: Uuid) -> String {
        format!("{}campaigns.acks.{campaign}", self.prefix)
    }
    /// `campaigns.dlq.<original subject without prefix>`.
    pub fn dlq(&self, original: &str) -> String {
        let bare = original.strip_prefix(&self.prefix).unwrap_or(original);
        format!("{}campaigns.dlq.{bare}", self.prefix)
    }
    pub fn dlq_all(&self) -> String {
        format!("{}campaigns.dlq.>", self.prefix)
    }
}

#[derive(Debug, Clone)]
pub struct StreamNames {
    pub events: String,
    pub control: String,
    pub work: String,
    pub tracked: String,
    pub dlq: String,
}

impl StreamNames {
    pub fn new(prefix: &str) -> Self {
        Self {
            events: format!("{prefix}_EVENTS"),
            control: format!("{prefix}_CONTROL"),
            work: format!("{prefix}_WORK"),
            tracked: format!("{prefix}_TRACKED"),
            dlq: format!("{prefix}_DLQ"),
        }
    }

    /// Every stream Herald owns.
    pub fn all(&self) -> [&str; 5] {
        [
            &self.events,
            &self.control,
            &self.work,
            &self.tracked,
            &self.dlq,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_prefix_gets_its_separator_whether_or_not_it_has_one() {
        let campaign = Uuid::nil();
        for prefix in ["newcomer", "newcomer.", " newcomer "] {
            let subjects = Subjects::new(prefix);
            assert_eq!(subjects.pack(), "newcomer.campaigns.pack", "{prefix:?}");
            assert_eq!(
                subjects.events(campaign),
                format!("newcomer.campaigns.events.{campaign}")
            );
        }
        assert_eq!(Subjects::new("").send(), "campaigns.send");
        assert_eq!(
            Subjects::new("a.b").control_all(),
            "a.b.campaigns.control.>"
        );
    }

    #[test]
    fn a_dead_letter_subject_keeps_the_prefix_once() {
        let subjects = Subjects::new("staging");
        assert_eq!(
            subjects.dlq("staging.campaigns.send"),
            "staging.campaigns.dlq.campaigns.send"
        );
    }
}
