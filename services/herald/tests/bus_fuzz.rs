//! Bus fuzz (docs/ARCHITECTURE.md invariant 7, "bad messages are contained"): random and
//! adversarial payloads on every subject Herald consumes (`campaigns.pack`,
//! `campaigns.send`, `campaigns.control.<id>`), against an in-process stack of
//! one api, one packer and two senders.
//!
//! Every bad message must be terminated (never redelivered), dead-lettered once
//! per consumer that saw it with a non-empty reason, and counted in
//! `herald_dead_lettered_total{subject}`; schema-valid messages about unknown
//! campaigns are acknowledged quietly; and afterwards a real campaign still
//! completes with nothing left pending on any consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald_core::bus::{Bus, PACKER_DURABLE, SENDER_DURABLE};
use herald_core::contracts::DeadLetter;
use herald_core::lifecycle::Status;
use herald_testkit::faults::wait_until;
use herald_testkit::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// A small deterministic generator (xorshift64*): reproducible "random" bytes
/// without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The largest body published: just under the 1 MiB limit of the server
/// (`max_payload`) and of the streams (`max_message_size`), leaving room for
/// the headers.
const NEAR_LIMIT: usize = 1024 * 1024 - 4 * 1024;

/// A type that is wrong for every field of these schemas.
fn wrong_type(value: &Value) -> Value {
    match value {
        Value::String(_) => json!(12345),
        Value::Number(_) => json!("12345"),
        _ => json!([]),
    }
}

/// A payload and what makes it bad.
type Labelled = (String, Vec<u8>);

/// Payloads derived from one valid document: each must be refused by the schema
/// (or by decoding), never acted upon.
fn adversarial(valid: &Value, specific: &[(&str, Value)], rng: &mut Rng) -> Vec<Labelled> {
    let text = valid.to_string();
    let object = valid.as_object().expect("an object");
    let mut out: Vec<Labelled> = vec![
        ("empty".into(), Vec::new()),
        ("one brace".into(), b"{".to_vec()),
        (
            "truncated".into(),
            text.as_bytes()[..text.len() / 2].to_vec(),
        ),
        ("null".into(), b"null".to_vec()),
        ("array".into(), b"[]".to_vec()),
        ("number".into(), b"42".to_vec()),
        ("string".into(), b"\"campaign\"".to_vec()),
        ("deep nesting".into(), "[".repeat(100_000).into_bytes()),
        (
            "invalid utf-8 inside JSON".into(),
            b"{\"campaignId\": \"\xff\xfe\"}".to_vec(),
        ),
    ];
    for key in object.keys() {
        let mut doc = valid.clone();
        doc[key] = wrong_type(&valid[key]);
        out.push((
            format!("{key} of the wrong type"),
            doc.to_string().into_bytes(),
        ));
        let mut doc = valid.clone();
        doc.as_object_mut().expect("object").remove(key);
        out.push((format!("without {key}"), doc.to_string().into_bytes()));
    }
    let mut extra = valid.clone();
    extra["requestId"] = json!("abc-123");
    out.push(("an extra field".into(), extra.to_string().into_bytes()));
    for bad in ["00000000-0000-1000-8000-000000000000", "abc-123", ""] {
        let mut doc = valid.clone();
        doc["correlationId"] = json!(bad);
        out.push((
            format!("correlation id {bad:?}"),
            doc.to_string().into_bytes(),
        ));
    }
    for (label, doc) in specific {
        out.push(((*label).to_owned(), doc.to_string().into_bytes()));
    }
    let mut huge = valid.clone();
    huge["pad"] = json!("");
    let room = NEAR_LIMIT - huge.to_string().len();
    huge["pad"] = json!("x".repeat(room));
    let huge = huge.to_string().into_bytes();
    assert_eq!(huge.len(), NEAR_LIMIT);
    out.push(("a body just under 1 MiB".into(), huge));
    for len in [1, 17, 256, 4096] {
        out.push((format!("{len} random bytes"), rng.bytes(len)));
    }
    out
}

fn with(valid: &Value, key: &str, value: Value) -> Value {
    let mut doc = valid.clone();
    doc[key] = value;
    doc
}

/// Every dead letter of one DLQ subject, decoded (each must be schema-valid).
async fn dead_letters(bus: &Bus, bare_subject: &str) -> Vec<DeadLetter> {
    let filter = format!("{}campaigns.dlq.{bare_subject}", bus.subjects.prefix());
    read_stream(bus, &bus.streams.dlq, &filter)
        .await
        .iter()
        .map(|m| herald_core::contracts::decode(&m.payload).expect("a schema-valid dead letter"))
        .collect()
}

/// `herald_dead_lettered_total` per subject label, from the process's recorder.
fn dead_letter_metric(prefix: &str) -> Option<BTreeMap<String, u64>> {
    let text = herald_core::telemetry::render()?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("herald_dead_lettered_total{subject=\"") else {
            continue;
        };
        let Some((subject, value)) = rest.split_once("\"}") else {
            continue;
        };
        let Some(bare) = subject.strip_prefix(prefix) else {
            continue;
        };
        let key = if bare.starts_with("campaigns.control.") {
            "campaigns.control.>".to_owned()
        } else {
            bare.to_owned()
        };
        *out.entry(key).or_default() += value.trim().parse::<u64>().unwrap_or(0);
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_payloads_on_every_consumed_subject_are_dead_lettered_and_the_pipeline_keeps_working()
 {
    // The process-wide recorder the binary installs; here it records the
    // in-process services. None if something else installed one first.
    let metrics_on = herald_core::telemetry::install().is_some();
    let provider = ProviderDouble::start(Duration::ZERO).await;
    let stack = Stack::start(1, 2, test_sender_config()).await;
    let bus = stack.env.bus().await;
    let prefix = bus.subjects.prefix().to_owned();
    // The replicas' control durables (the Stack waited for them to exist).
    let replicas = [
        "ctl_packer_packer-0",
        "ctl_sender_sender-0",
        "ctl_sender_sender-1",
    ];
    let live = stack.create_campaign(json!({"provider": "log"})).await;

    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let pack = json!({"campaignId": Uuid::new_v4(), "runEpoch": 1,
        "triggeredAt": "2026-01-01T00:00:00Z", "triggeredBy": "manual", "correlationId": Uuid::new_v4()});
    let send = json!({"campaignId": Uuid::new_v4(), "runEpoch": 1, "firstRecipientId": 1,
        "lastRecipientId": 10, "recipientCount": 10, "correlationId": Uuid::new_v4()});
    let control = json!({"campaignId": live, "action": "pause", "correlationId": Uuid::new_v4()});
    let cases: Vec<(String, Vec<Labelled>)> = vec![
        (
            bus.subjects.pack(),
            adversarial(
                &pack,
                &[
                    (
                        "an unknown trigger",
                        with(&pack, "triggeredBy", json!("cron")),
                    ),
                    (
                        "a date that is no date",
                        with(&pack, "triggeredAt", json!("yesterday")),
                    ),
                    ("epoch 0", with(&pack, "runEpoch", json!(0))),
                ],
                &mut rng,
            ),
        ),
        (
            bus.subjects.send(),
            adversarial(
                &send,
                &[
                    (
                        "a negative recipient id",
                        with(&send, "firstRecipientId", json!(-5)),
                    ),
                    (
                        "a count over the limit",
                        with(&send, "recipientCount", json!(100_001)),
                    ),
                    (
                        "an id that is no uuid",
                        with(&send, "campaignId", json!("campaign-1")),
                    ),
                ],
                &mut rng,
            ),
        ),
        (
            bus.subjects.control(live),
            adversarial(
                &control,
                &[
                    (
                        "an unknown action",
                        with(&control, "action", json!("explode")),
                    ),
                    (
                        "an action in capitals",
                        with(&control, "action", json!("PAUSE")),
                    ),
                ],
                &mut rng,
            ),
        ),
    ];
    // Schema-valid messages about campaigns that do not exist: acknowledged,
    // never dead-lettered.
    let foreign = [
        (
            bus.subjects.pack(),
            with(&pack, "campaignId", json!(Uuid::new_v4())),
        ),
        (
            bus.subjects.send(),
            with(&send, "campaignId", json!(Uuid::new_v4())),
        ),
        {
            let other = Uuid::new_v4();
            (
                bus.subjects.control(other),
                with(&control, "campaignId", json!(other)),
            )
        },
    ];

    let mut published: BTreeMap<&str, Vec<(String, usize)>> = BTreeMap::new();
    for (subject, payloads) in &cases {
        let bare = subject.strip_prefix(&prefix).unwrap();
        let key = if bare.starts_with("campaigns.control.") {
            "campaigns.control.>"
        } else {
            bare
        };
        for (i, (label, payload)) in payloads.iter().enumerate() {
            // Control payloads also go to odd subjects under campaigns.control.>.
            let subject = match (key, i % 3) {
                ("campaigns.control.>", 1) => bus.subjects.control(Uuid::new_v4()),
                ("campaigns.control.>", 2) => format!("{prefix}campaigns.control.not-a-uuid"),
                _ => subject.clone(),
            };
            bus.publish_raw(
                subject,
                payload.clone().into(),
                &Uuid::new_v4().to_string(),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("publishing {label}: {e:#}"));
            published
                .entry(key)
                .or_default()
                .push((label.clone(), payload.len()));
        }
    }
    for (subject, doc) in &foreign {
        bus.publish_raw(
            subject.clone(),
            doc.to_string().into_bytes().into(),
            &Uuid::new_v4().to_string(),
            None,
        )
        .await
        .expect("publishing a valid message");
    }

    // A bad work message is dead-lettered by the one consumer that took it; a bad
    // control message by each of the three replicas, since each has its own
    // control consumer.
    let expected: BTreeMap<&str, usize> = published
        .iter()
        .map(|(key, list)| {
            let per = if *key == "campaigns.control.>" {
                replicas.len()
            } else {
                1
            };
            (*key, list.len() * per)
        })
        .collect();
    for (key, want) in &expected {
        wait_until(
            &format!("{want} dead letters for {key}"),
            Duration::from_secs(60),
            || async { (dead_letters(&bus, key).await.len() >= *want).then_some(()) },
        )
        .await;
    }

    // The pipeline still works: a real campaign completes.
    let id = stack.create_campaign(provider.webhook_channel()).await;
    stack.import(id, 300).await;
    assert_eq!(stack.transition(id, "start").await.0, 200);
    let body = stack
        .wait_for_status(id, Status::Completed, Duration::from_secs(60))
        .await;
    assert_counters_match_ledger(&stack.env.pool(), id, &body).await;
    assert_eq!(provider.per_key().len(), 300);
    assert!(provider.per_key().values().all(|n| *n == 1));
    assert_every_fate_accounted(&stack.client, &stack.env.pool(), id).await;

    // Exactly the expected dead letters: none for the valid foreign messages, none
    // twice, each with its reason, and each terminated on its first delivery.
    for (key, want) in &expected {
        let letters = dead_letters(&bus, key).await;
        assert_eq!(letters.len(), *want, "dead letters for {key}");
        let sizes: BTreeSet<u64> = published[key].iter().map(|(_, n)| *n as u64).collect();
        let mut consumers_per_message: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for letter in &letters {
            assert!(!letter.reason.trim().is_empty(), "a reason: {letter:?}");
            assert_eq!(
                letter.delivered_count,
                Some(1),
                "terminated, not redelivered"
            );
            assert!(sizes.contains(&letter.payload_bytes), "{letter:?}");
            assert_eq!(
                letter.payload_truncated,
                letter.payload_bytes as usize > herald_core::contracts::DEAD_LETTER_PAYLOAD_LIMIT
            );
            if *key == "campaigns.control.>" {
                assert!(letter.original_subject.starts_with("campaigns.control."));
            } else {
                assert_eq!(letter.original_subject, *key);
                let consumer = if *key == "campaigns.pack" {
                    PACKER_DURABLE
                } else {
                    SENDER_DURABLE
                };
                assert_eq!(letter.consumer, consumer);
            }
            let seq = letter.stream_sequence.expect("the stream sequence");
            assert!(
                consumers_per_message
                    .entry(seq)
                    .or_default()
                    .insert(letter.consumer.clone()),
                "{seq} dead-lettered twice by {}",
                letter.consumer
            );
        }
        if *key == "campaigns.control.>" {
            let all: BTreeSet<String> = replicas.iter().map(|r| (*r).to_owned()).collect();
            assert!(consumers_per_message.values().all(|c| *c == all));
        }
    }

    // Nothing is left pending or unacknowledged on any consumer.
    for durable in [PACKER_DURABLE, SENDER_DURABLE] {
        let mut consumer = bus.work_consumer(durable).await.unwrap();
        let info = consumer.info().await.unwrap();
        assert_eq!(info.num_ack_pending, 0, "{durable}: {info:?}");
        assert_eq!(info.num_pending, 0, "{durable}: {info:?}");
    }
    let control_stream = bus.js.get_stream(&bus.streams.control).await.unwrap();
    for name in replicas {
        let mut consumer = control_stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        assert_eq!(info.num_ack_pending, 0, "{name}: {info:?}");
        assert_eq!(info.num_pending, 0, "{name}: {info:?}");
    }

    eprintln!("dead letters per subject: {expected:?} (metrics recorder: {metrics_on})");
    // The counter agrees with the stream.
    if metrics_on {
        let counted = dead_letter_metric(&prefix).expect("a recorder");
        for (key, want) in &expected {
            assert_eq!(
                counted.get(*key).copied().unwrap_or(0),
                *want as u64,
                "herald_dead_lettered_total for {key}: {counted:?}"
            );
        }
    } else {
        eprintln!("no metrics recorder could be installed; checked the DLQ stream only");
    }
    stack.stop().await;
}
