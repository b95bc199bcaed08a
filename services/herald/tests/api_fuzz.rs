//! API fuzz (issue 5): the HTTP API driven from its own OpenAPI document by a
//! property-based test.
//!
//! The test reads `GET /openapi.json` from an in-process api, enumerates every
//! operation (path template, method, parameters, request body schema, documented
//! responses) and lets proptest generate requests for random operations:
//!
//! - path parameters: this tenant's campaigns in every state (draft, scheduled,
//!   sending, paused, stopped) in several id spellings, another tenant's
//!   campaign, random uuids, the documented action names, and garbage (unicode,
//!   very long, `..`, percent-encoded bytes);
//! - documented query parameters with valid and invalid values, and unknown ones;
//! - `Authorization` (valid, missing, garbage, very long), `If-Match` (garbage,
//!   negative, huge), `X-Correlation-Id` (valid, invalid) and `Content-Type`
//!   (JSON, CSV, text, none, garbage);
//! - bodies shaped by the documented schema with random field values (wrong
//!   types, nulls, huge numbers, very long strings, NULs, unknown fields), other
//!   schemas, random JSON, truncated or invalid JSON, invalid UTF-8, deep
//!   nesting, CSV, empty bodies, and now and then one over the 1 MiB limit.
//!
//! Requests go over a raw HTTP/1.1 connection, so paths such as `..` reach the
//! server as written. Every response must arrive within 10 s with a status below
//! 500 that the operation documents or that is generic, and every 4xx must carry
//! the `{"error": {"code", "message"}}` shape. Afterwards the api still answers,
//! a new campaign still starts and pauses, every campaign's counters equal its
//! ledger, and the other tenant's campaign is untouched.
//!
//! The run is reproducible: a fixed number of cases and a fixed ChaCha seed.
//! `HERALD_API_FUZZ_SEED=<u64>` and `HERALD_API_FUZZ_CASES=<n>` explore further;
//! `HERALD_API_FUZZ_LOG=1` prints every request and its answer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_testkit::*;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::{BoxedStrategy, Union};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Requests per run.
const CASES: u32 = 400;
/// The default seed ("HERALD" and the issue number).
const SEED: u64 = 0x4845_5241_4C44_0005;
/// A request that takes longer has hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Statuses any operation may answer without documenting them.
const GENERIC_STATUSES: [u16; 9] = [400, 401, 404, 405, 409, 412, 413, 415, 422];
/// Just over the api's 1 MiB JSON body limit.
const HUGE_BODY_BYTES: usize = 1024 * 1024 + 4096;
/// Marks a JSON string to be replaced by a real campaign id when the request is sent.
const PLACEHOLDER: &str = "\u{1}campaign:";
const OTHER_METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

// ---------------------------------------------------------------------------
// The OpenAPI document

/// One documented parameter.
#[derive(Debug, Clone)]
struct Param {
    name: String,
    location: String,
    required: bool,
    schema: Value,
    description: String,
}

/// One documented operation.
#[derive(Debug, Clone)]
struct Operation {
    method: String,
    template: String,
    params: Vec<Param>,
    /// Component schemas the request body refers to, e.g. `CreateCampaign`.
    body_schemas: Vec<String>,
    /// The request body's description (it names other accepted media types).
    body_description: String,
    responses: BTreeSet<u16>,
}

impl Operation {
    fn label(&self) -> String {
        format!("{} {}", self.method, self.template)
    }

    fn takes_json(&self) -> bool {
        !self.body_schemas.is_empty()
    }

    fn takes_csv(&self) -> bool {
        self.body_description.contains("text/csv")
    }
}

async fn fetch_openapi(stack: &Stack) -> Value {
    let response = stack
        .http
        .get(stack.url("/openapi.json"))
        .send()
        .await
        .expect("openapi.json answers");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("openapi.json is JSON")
}

/// Every `$ref` to a component schema inside `value`, in order, once each.
fn schema_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let name = child
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/schemas/"));
                match name {
                    Some(name) if key == "$ref" => {
                        if !out.iter().any(|n| n == name) {
                            out.push(name.to_owned());
                        }
                    }
                    _ => schema_refs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| schema_refs(item, out)),
        _ => {}
    }
}

/// Every operation of the document, in document order.
fn operations(doc: &Value) -> Vec<Operation> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let params = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| Param {
                    name: p["name"].as_str().unwrap_or_default().to_owned(),
                    location: p["in"].as_str().unwrap_or_default().to_owned(),
                    required: p["required"].as_bool().unwrap_or(false),
                    schema: p["schema"].clone(),
                    description: p["description"].as_str().unwrap_or_default().to_owned(),
                })
                .collect();
            let mut body_schemas = Vec::new();
            schema_refs(&op["requestBody"]["content"], &mut body_schemas);
            let responses = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .filter_map(|status| status.parse().ok())
                .collect();
            out.push(Operation {
                method: method.to_uppercase(),
                template: template.clone(),
                params,
                body_schemas,
                body_description: op["requestBody"]["description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                responses,
            });
        }
    }
    out
}

/// The `{name}` parameters of a path template, in order.
fn template_params(template: &str) -> Vec<String> {
    template
        .split('{')
        .skip(1)
        .filter_map(|piece| piece.split_once('}').map(|(name, _)| name.to_owned()))
        .collect()
}

/// `schema` with its `$ref` resolved (one level).
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => &doc["components"]["schemas"][name],
        None => schema,
    }
}

/// The concrete alternatives of a schema: `$ref`s resolved, `oneOf`s expanded.
fn alternatives<'a>(doc: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    let schema = resolve(doc, schema);
    match schema["oneOf"].as_array() {
        Some(branches) => branches
            .iter()
            .flat_map(|branch| alternatives(doc, branch))
            .collect(),
        None => vec![schema],
    }
}

/// The `type` of a schema: one name or a list of names.
fn types(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// What a case is

/// The campaigns seeded before the run; a path or body names one by its slot and
/// gets its real id when the request is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Draft,
    SecondDraft,
    Scheduled,
    Sending,
    Paused,
    Stopped,
    /// Another tenant's draft.
    Foreign,
}

const SLOTS: [Slot; 7] = [
    Slot::Draft,
    Slot::SecondDraft,
    Slot::Scheduled,
    Slot::Sending,
    Slot::Paused,
    Slot::Stopped,
    Slot::Foreign,
];

/// The spellings of a uuid that `Uuid::from_str` accepts.
#[derive(Debug, Clone, Copy)]
enum IdFormat {
    Hyphenated,
    Simple,
    Upper,
    Braced,
    Urn,
}

/// Bytes shown shortened in failure reports.
#[derive(Clone)]
struct Blob(Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", preview(&self.0))
    }
}

fn preview(bytes: &[u8]) -> String {
    const SHOWN: usize = 160;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
    if bytes.len() > SHOWN {
        format!("{shown:?}... ({} bytes)", bytes.len())
    } else {
        format!("{shown:?}")
    }
}

#[derive(Debug, Clone)]
enum Segment {
    Campaign(Slot, IdFormat),
    /// Text as it goes on the request line (already percent-encoded).
    Raw(String),
}

#[derive(Debug, Clone)]
enum Auth {
    Valid,
    /// `bearer <token>`.
    LowercaseScheme,
    /// `Bearer   <token>  `.
    PaddedToken,
    Missing,
    Raw(Blob),
}

#[derive(Clone)]
enum BodyPlan {
    Absent,
    Json(Value),
    /// The JSON text cut after this many thousandths of its length.
    Truncated(Value, usize),
    Raw(Blob),
    Csv(Blob),
    /// A JSON document just over the 1 MiB limit, built when sent.
    Huge,
}

impl fmt::Debug for BodyPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyPlan::Absent => write!(f, "Absent"),
            BodyPlan::Json(value) => write!(f, "Json({})", preview(value.to_string().as_bytes())),
            BodyPlan::Truncated(value, permille) => write!(
                f,
                "Truncated({permille}/1000 of {})",
                preview(value.to_string().as_bytes())
            ),
            BodyPlan::Raw(blob) => write!(f, "Raw({blob:?})"),
            BodyPlan::Csv(blob) => write!(f, "Csv({blob:?})"),
            BodyPlan::Huge => write!(f, "Huge({HUGE_BODY_BYTES} bytes)"),
        }
    }
}

/// One generated request, before ids are filled in.
#[derive(Debug, Clone)]
struct Case {
    op: usize,
    /// Another method than the documented one, now and then.
    method: Option<&'static str>,
    /// One per `{param}` of the template, in order.
    segments: Vec<Segment>,
    /// `name=value` pairs, already percent-encoded.
    query: Vec<(String, String)>,
    auth: Auth,
    if_match: Option<Blob>,
    correlation: Option<Blob>,
    content_type: Option<Blob>,
    body: BodyPlan,
}

// ---------------------------------------------------------------------------
// Strategies

fn weighted<T: fmt::Debug + 'static>(arms: Vec<(u32, BoxedStrategy<T>)>) -> BoxedStrategy<T> {
    Union::new_weighted(arms).boxed()
}

fn constant<T: Clone + fmt::Debug + 'static>(value: T) -> BoxedStrategy<T> {
    Just(value).boxed()
}

fn one_of_str(values: &'static [&'static str]) -> BoxedStrategy<String> {
    select(values).prop_map(str::to_owned).boxed()
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const SPECIAL_STRINGS: &[&str] = &[
    "",
    " ",
    "\t\n",
    "\u{0}",
    "a\u{0}b",
    "Hi {{ name }}",
    "{{",
    "{% for x in y %}",
    "{{ name | nosuchfilter }}",
    "http://127.0.0.1:9/hook",
    "https://example.invalid/x",
    "ftp://example.invalid/x",
    "javascript:alert(1)",
    "\u{202e}evil",
    "💥🔥",
    "null",
    "true",
    "0",
    "-1",
    "1e999",
    "' OR 1=1 --",
    "\\",
    "\"",
    "../../etc/passwd",
    "%00",
    "\u{feff}address",
    "+15550001234",
];

/// Short strings of every kind (no very long ones).
fn short_text() -> BoxedStrategy<String> {
    weighted(vec![
        (6, "[a-zA-Z0-9 _.+-]{1,24}".boxed()),
        (4, ".{0,24}".boxed()),
        (3, one_of_str(SPECIAL_STRINGS)),
    ])
}

/// Strings for field values: short ones, and now and then very long ones.
fn fuzz_text() -> BoxedStrategy<String> {
    weighted(vec![
        (16, short_text()),
        // Around the 200-character and 10,000-byte limits, and well past them.
        (2, (190usize..3_000).prop_map(|n| "é".repeat(n)).boxed()),
        (1, (9_990usize..10_010).prop_map(|n| "y".repeat(n)).boxed()),
        (
            1,
            (10_000usize..120_000).prop_map(|n| "x".repeat(n)).boxed(),
        ),
    ])
}

/// Any JSON value, nested a few levels.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = weighted(vec![
        (1, constant(Value::Null)),
        (1, any::<bool>().prop_map(Value::Bool).boxed()),
        (2, any::<i64>().prop_map(Value::from).boxed()),
        (
            1,
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
                .boxed(),
        ),
        (3, short_text().prop_map(Value::String).boxed()),
    ]);
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A value of another JSON type than the schema asks for.
fn wrong_type() -> BoxedStrategy<Value> {
    weighted(vec![
        (1, constant(json!(12345))),
        (1, constant(json!("12345"))),
        (1, constant(json!(true))),
        (1, constant(json!([]))),
        (1, constant(json!({}))),
        (1, constant(json!([[[[{"a": [1]}]]]]))),
    ])
}

fn placeholder(slot: Slot) -> Value {
    Value::String(format!("{PLACEHOLDER}{slot:?}"))
}

fn uuid_text() -> BoxedStrategy<Value> {
    weighted(vec![
        (6, select(&SLOTS[..]).prop_map(placeholder).boxed()),
        (
            2,
            any::<u128>()
                .prop_map(|n| Value::String(Uuid::from_u128(n).to_string()))
                .boxed(),
        ),
        (1, fuzz_text().prop_map(Value::String).boxed()),
    ])
}

const DATE_TIMES: &[&str] = &[
    "2099-01-01T00:00:00Z",
    "2030-06-15T12:30:00+02:00",
    "2001-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "+262142-12-31T23:59:59Z",
    "-4714-11-23T00:00:00Z",
    "-262143-01-01T00:00:00Z",
    "2030-02-30T00:00:00Z",
    "2030-01-01",
    "2030-01-01T25:00:00Z",
    "2030-01-01T00:00:00+25:00",
    "yesterday",
];

const URLS: &[&str] = &[
    "http://127.0.0.1:9/hook",
    "https://example.invalid/send",
    "http://[::1]:9/x",
    "file:///etc/passwd",
    "not a url",
    "http://",
];

const TEMPLATES: &[&str] = &[
    "Hi {{ name }}",
    "{{ name | upper }} {% if code %}{{ code }}{% endif %}",
    "{% for i in range(100000000) %}x{% endfor %}",
    "{{ ",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{% include 'other' %}",
];

/// How a schema-shaped value is filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Values the api should accept, so requests reach its storage.
    Valid,
    /// Random values, wrong types, nulls and unknown fields.
    Fuzz,
}

/// A string for the property `name` of the given schema.
fn string_value(schema: &Value, name: &str, mode: Mode) -> BoxedStrategy<Value> {
    let text = || fuzz_text().prop_map(Value::String).boxed();
    let pick = |values: &'static [&'static str]| one_of_str(values).prop_map(Value::String).boxed();
    if let Some(values) = schema["enum"].as_array() {
        let known = select(values.clone()).boxed();
        return match mode {
            Mode::Valid => known,
            Mode::Fuzz => weighted(vec![(10, known), (1, text())]),
        };
    }
    let format = schema["format"].as_str();
    if mode == Mode::Valid {
        return match (format, name) {
            (Some("uuid"), _) => select(&SLOTS[..]).prop_map(placeholder).boxed(),
            (Some("date-time"), _) => pick(&DATE_TIMES[..2]),
            (_, "url" | "base_url") => pick(&URLS[..2]),
            (_, "body") => pick(&TEMPLATES[..2]),
            (_, "address") => "\\+1555[0-9]{7}".prop_map(Value::String).boxed(),
            // Up to the 200 characters a name may have.
            _ => weighted(vec![
                (3, "[A-Za-z][A-Za-z0-9 ]{0,19}".boxed()),
                (1, "[A-Za-z][A-Za-z0-9 ]{20,199}".boxed()),
            ])
            .prop_map(Value::String)
            .boxed(),
        };
    }
    match (format, name) {
        (Some("uuid"), _) => uuid_text(),
        (Some("date-time"), _) => weighted(vec![(4, pick(DATE_TIMES)), (1, text())]),
        (_, "url" | "base_url") => weighted(vec![(4, pick(URLS)), (1, text())]),
        (_, "body") => weighted(vec![(4, pick(TEMPLATES)), (1, text())]),
        (_, "address") => weighted(vec![
            (4, "\\+1555[0-9]{7}".prop_map(Value::String).boxed()),
            (1, text()),
        ]),
        _ => text(),
    }
}

fn integer_value(mode: Mode) -> BoxedStrategy<Value> {
    if mode == Mode::Valid {
        return (1i64..1_000).prop_map(Value::from).boxed();
    }
    weighted(vec![
        (10, (-3i64..1_000).prop_map(Value::from).boxed()),
        (1, constant(json!(i64::from(i32::MAX) + 1))),
        (1, constant(json!(i64::MAX))),
        (1, constant(json!(i64::MIN))),
        (1, constant(json!(u64::MAX))),
        (1, constant(json!(1e300))),
        (1, constant(json!(0.5))),
    ])
}

/// A free-form object (e.g. recipient variables).
fn free_object(mode: Mode) -> BoxedStrategy<Value> {
    let value = match mode {
        Mode::Valid => "[A-Za-z0-9 ]{0,12}".prop_map(Value::String).boxed(),
        Mode::Fuzz => any_json(),
    };
    prop::collection::btree_map("[a-z_]{1,8}", value, 0..4)
        .prop_map(|map| Value::Object(map.into_iter().collect()))
        .boxed()
}

/// A value shaped by `schema`.
fn shaped(doc: &Value, schema: &Value, name: &str, depth: u32, mode: Mode) -> BoxedStrategy<Value> {
    if depth > 6 {
        return constant(Value::Null);
    }
    let branches = alternatives(doc, schema);
    if branches.len() > 1 {
        let branches: Vec<_> = branches
            .into_iter()
            .filter(|b| mode == Mode::Fuzz || types(b) != ["null"])
            .map(|b| shaped(doc, b, name, depth, mode))
            .collect();
        return Union::new(branches).boxed();
    }
    let schema = branches[0];
    let mut arms: Vec<(u32, BoxedStrategy<Value>)> = Vec::new();
    for kind in types(schema) {
        let arm = match kind {
            "null" if mode == Mode::Valid => continue,
            "null" => (1, constant(Value::Null)),
            "object" => (10, object_value(doc, schema, depth, mode)),
            "array" => (10, array_value(doc, schema, name, depth, mode)),
            "string" => (10, string_value(schema, name, mode)),
            "integer" | "number" => (10, integer_value(mode)),
            "boolean" => (10, any::<bool>().prop_map(Value::Bool).boxed()),
            _ => (1, any_json()),
        };
        arms.push(arm);
    }
    if arms.is_empty() {
        arms.push((1, any_json()));
    }
    weighted(arms)
}

/// A property value; when fuzzing, now and then the wrong type or null.
fn field_value(
    doc: &Value,
    schema: &Value,
    name: &str,
    depth: u32,
    mode: Mode,
) -> BoxedStrategy<Value> {
    let value = shaped(doc, schema, name, depth + 1, mode);
    match mode {
        Mode::Valid => value,
        Mode::Fuzz => weighted(vec![
            (14, value),
            (1, wrong_type()),
            (1, constant(Value::Null)),
        ]),
    }
}

fn object_value(doc: &Value, schema: &Value, depth: u32, mode: Mode) -> BoxedStrategy<Value> {
    let Some(properties) = schema["properties"].as_object() else {
        return free_object(mode);
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = properties
        .iter()
        .map(|(key, property)| {
            let probability = match (required.contains(&key.as_str()), mode) {
                (true, Mode::Valid) => 1.0_f64,
                (true, Mode::Fuzz) => 0.95,
                (false, Mode::Valid) => 0.5,
                (false, Mode::Fuzz) => 0.6,
            };
            let key = key.clone();
            let pair =
                field_value(doc, property, &key, depth, mode).prop_map(move |v| (key.clone(), v));
            if probability >= 1.0 {
                pair.prop_map(Some).boxed()
            } else {
                prop::option::weighted(probability, pair).boxed()
            }
        })
        .collect();
    let unknown = match mode {
        Mode::Valid => constant(None),
        Mode::Fuzz => {
            prop::option::weighted(0.08, ("[a-z_]{1,12}", short_text().prop_map(Value::String)))
                .boxed()
        }
    };
    (fields, unknown)
        .prop_map(|(fields, unknown)| {
            Value::Object(fields.into_iter().flatten().chain(unknown).collect())
        })
        .boxed()
}

fn array_value(
    doc: &Value,
    schema: &Value,
    name: &str,
    depth: u32,
    mode: Mode,
) -> BoxedStrategy<Value> {
    let items = field_value(doc, &schema["items"], name, depth, mode);
    if mode == Mode::Valid {
        return prop::collection::vec(items, 1..4)
            .prop_map(Value::Array)
            .boxed();
    }
    weighted(vec![
        (
            12,
            prop::collection::vec(items, 0..4)
                .prop_map(Value::Array)
                .boxed(),
        ),
        // Over the documented limits (1,000 bulk ids), cheaply.
        (
            1,
            (1_001usize..1_004)
                .prop_map(|n| Value::Array(vec![json!(Uuid::nil().to_string()); n]))
                .boxed(),
        ),
    ])
}

const RAW_SEGMENTS: &[&str] = &[
    "..",
    ".",
    "%2e%2e",
    "%2E",
    "%00",
    "%ff%fe",
    "%2F",
    "a%2Fb",
    "%",
    "%zz",
    "%C3%28",
    "bulk",
    "null",
    "0",
    "-1",
    "%F0%9F%92%A5",
    "%20",
    "~",
    "00000000-0000-0000-0000-000000000000",
];

fn garbage_segment() -> BoxedStrategy<Segment> {
    weighted(vec![
        (4, short_text().prop_map(|s| encode(&s)).boxed()),
        (4, one_of_str(RAW_SEGMENTS)),
        (1, (1usize..20_000).prop_map(|n| "a".repeat(n)).boxed()),
    ])
    .prop_map(Segment::Raw)
    .boxed()
}

fn id_segment() -> BoxedStrategy<Segment> {
    let format = prop_oneof![
        8 => Just(IdFormat::Hyphenated),
        1 => Just(IdFormat::Simple),
        1 => Just(IdFormat::Upper),
        1 => Just(IdFormat::Braced),
        1 => Just(IdFormat::Urn),
    ];
    weighted(vec![
        (
            10,
            (select(&SLOTS[..]), format)
                .prop_map(|(slot, format)| Segment::Campaign(slot, format))
                .boxed(),
        ),
        (
            2,
            any::<u128>()
                .prop_map(|n| Segment::Raw(Uuid::from_u128(n).to_string()))
                .boxed(),
        ),
        (3, garbage_segment()),
    ])
}

/// The values a parameter's description lists, e.g. "pause, resume or stop".
fn described_values(param: &Param) -> Vec<String> {
    param
        .description
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|word| !word.is_empty() && *word != "or" && *word != "and")
        .map(str::to_owned)
        .collect()
}

/// A value for a path parameter: ids for uuids, the documented words (e.g. the
/// actions listed in the description) for strings, and garbage.
fn segment_strategy(param: Option<&Param>) -> BoxedStrategy<Segment> {
    let Some(param) = param else {
        return garbage_segment();
    };
    if param.schema["format"] == "uuid" {
        return id_segment();
    }
    let words = described_values(param);
    if words.is_empty() {
        return garbage_segment();
    }
    weighted(vec![
        (10, select(words).prop_map(Segment::Raw).boxed()),
        (
            1,
            one_of_str(&["Start", "PAUSE", "start%20", "start.json"])
                .prop_map(Segment::Raw)
                .boxed(),
        ),
        (2, garbage_segment()),
    ])
}

/// Percent-encoded values for a documented query parameter.
fn query_value(doc: &Value, param: &Param) -> BoxedStrategy<String> {
    let mut arms: Vec<(u32, BoxedStrategy<String>)> = vec![
        (3, short_text().prop_map(|s| encode(&s)).boxed()),
        (
            1,
            one_of_str(&["%ff", "%zz", "%", "a+b", "%00", "", "[]", "a&b"]),
        ),
    ];
    let words = described_values(param);
    if words.len() > 1 {
        arms.push((8, select(words).boxed()));
    }
    for alternative in alternatives(doc, &param.schema) {
        if let Some(values) = alternative["enum"].as_array() {
            let values: Vec<String> = values
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            arms.push((8, select(values).boxed()));
        }
        if types(alternative).contains(&"integer") {
            arms.push((6, (-2i64..1_200).prop_map(|n| n.to_string()).boxed()));
            arms.push((
                2,
                one_of_str(&[
                    "99999999999999999999999",
                    "-9223372036854775809",
                    "1.5",
                    "1e3",
                    "0x10",
                ]),
            ));
        }
    }
    weighted(arms)
}

fn query_strategy(doc: &Value, op: &Operation) -> BoxedStrategy<Vec<(String, String)>> {
    let mut pairs: Vec<BoxedStrategy<Option<(String, String)>>> = op
        .params
        .iter()
        .filter(|p| p.location == "query")
        .map(|p| {
            let name = encode(&p.name);
            prop::option::weighted(
                0.35,
                query_value(doc, p).prop_map(move |v| (name.clone(), v)),
            )
            .boxed()
        })
        .collect();
    let unknown = ("[a-z_]{1,10}", short_text().prop_map(|s| encode(&s)));
    pairs.push(prop::option::weighted(0.12, unknown).boxed());
    pairs
        .prop_map(|pairs| pairs.into_iter().flatten().collect())
        .boxed()
}

/// Header values: printable ASCII and obs-text bytes (what HTTP allows).
fn header_garbage() -> BoxedStrategy<Blob> {
    weighted(vec![
        (3, "[ -~]{0,40}".prop_map(String::into_bytes).boxed()),
        (2, "Bearer [ -~]{0,60}".prop_map(String::into_bytes).boxed()),
        (
            2,
            "Bearer hrld_[A-Za-z0-9_-]{43}"
                .prop_map(String::into_bytes)
                .boxed(),
        ),
        (1, prop::collection::vec(0x80u8..=0xff, 1..20).boxed()),
        (
            1,
            select(
                &[
                    "Basic dXNlcjpwYXNz",
                    "Bearer",
                    "Bearer ",
                    "hrld_x",
                    "Bearer\tx",
                ][..],
            )
            .prop_map(|s| s.as_bytes().to_vec())
            .boxed(),
        ),
    ])
    .prop_map(Blob)
    .boxed()
}

fn auth_strategy() -> BoxedStrategy<Auth> {
    weighted(vec![
        (30, constant(Auth::Valid)),
        (1, constant(Auth::LowercaseScheme)),
        (1, constant(Auth::PaddedToken)),
        (3, constant(Auth::Missing)),
        (3, header_garbage().prop_map(Auth::Raw).boxed()),
        (
            1,
            (1_000usize..60_000)
                .prop_map(|n| {
                    Auth::Raw(Blob(format!("Bearer hrld_{}", "A".repeat(n)).into_bytes()))
                })
                .boxed(),
        ),
    ])
}

fn if_match_strategy() -> BoxedStrategy<Option<Blob>> {
    let value = weighted(vec![
        (4, (0i64..6).prop_map(|n| n.to_string()).boxed()),
        (2, (0i64..6).prop_map(|n| format!("\"{n}\"")).boxed()),
        (1, (0i64..6).prop_map(|n| format!("W/\"{n}\"")).boxed()),
        (
            3,
            one_of_str(&[
                "-1",
                "-9223372036854775808",
                "9223372036854775807",
                "99999999999999999999",
                "*",
                "abc",
                "",
                "1, 2",
                "1.0",
            ]),
        ),
    ])
    .prop_map(|s| Blob(s.into_bytes()));
    let value = weighted(vec![(5, value.boxed()), (1, header_garbage())]);
    prop::option::weighted(0.2, value).boxed()
}

fn correlation_strategy() -> BoxedStrategy<Option<Blob>> {
    let value = weighted(vec![
        (
            8,
            "[A-Za-z0-9._:-]{1,128}"
                .prop_map(String::into_bytes)
                .boxed(),
        ),
        (
            1,
            (129usize..400)
                .prop_map(|n| "a".repeat(n).into_bytes())
                .boxed(),
        ),
        (1, constant(Vec::new())),
        (2, header_garbage().prop_map(|b| b.0).boxed()),
    ])
    .prop_map(Blob);
    prop::option::weighted(0.25, value).boxed()
}

fn content_type_strategy(op: &Operation) -> BoxedStrategy<Option<Blob>> {
    let json = one_of_str(&[
        "application/json",
        "application/json",
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ]);
    let csv = one_of_str(&["text/csv", "text/csv", "text/csv; charset=utf-8"]);
    let other = one_of_str(&[
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json+weird",
        "application/problem+json",
        "*/*",
    ]);
    let some = |s: BoxedStrategy<String>| s.prop_map(|s| Some(Blob(s.into_bytes()))).boxed();
    weighted(vec![
        (if op.takes_json() { 16 } else { 4 }, some(json)),
        (if op.takes_csv() { 8 } else { 1 }, some(csv)),
        (2, some(other)),
        (2, constant(None)),
        (1, header_garbage().prop_map(Some).boxed()),
    ])
}

const RAW_BODIES: &[&[u8]] = &[
    b"{\"name\": \"\xff\xfe\"}",
    b"\xc3\x28",
    b"{\"recipients\":[{\"address\":\"\xed\xa0\x80\"}]}",
    b"\xef\xbb\xbf{}",
    b"address\n\xff\xfe\n",
    b"{\"rate_limit_per_second\": 1e999}",
    b"{\"name\": \"a\", \"name\": \"b\"}",
    b"{\"ids\": [\"",
    b"\"\\ud800\"",
    b"{\"name\": \"\\u0000\"}",
    b"{\"recipients\": [{\"address\": \"+15550001\", \"variables\": {\"k\": \"\\u0000\"}}]}",
    b"{\"recipients\": [{\"address\": \"+15550002\", \"variables\": {\"\\u0000\": 1}}]}",
    b"null",
    b"[]",
    b"{}",
    b" ",
    b"\x00\x00\x00",
];

fn invalid_utf8_body() -> BoxedStrategy<Vec<u8>> {
    weighted(vec![
        (2, select(RAW_BODIES).prop_map(<[u8]>::to_vec).boxed()),
        (
            1,
            prop::collection::vec(0x80u8..=0xff, 1..50)
                .prop_map(|bytes| [&b"{\"name\":\""[..], &bytes, b"\"}"].concat())
                .boxed(),
        ),
    ])
}

fn deep_nesting_body() -> BoxedStrategy<Vec<u8>> {
    weighted(vec![
        (
            1,
            (1usize..200_000)
                .prop_map(|n| "[".repeat(n).into_bytes())
                .boxed(),
        ),
        (
            1,
            (100usize..50_000)
                .prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes())
                .boxed(),
        ),
        (
            1,
            (100usize..20_000)
                .prop_map(|n| {
                    format!(
                        "{{\"recipients\":[{{\"address\":\"+1\",\"variables\":{}1{}}}]}}",
                        "{\"a\":".repeat(n),
                        "}".repeat(n)
                    )
                    .into_bytes()
                })
                .boxed(),
        ),
    ])
}

fn csv_body() -> BoxedStrategy<Vec<u8>> {
    let header = one_of_str(&[
        "address,name",
        "\u{feff}address,name",
        "name,phone",
        "address",
        "",
        "address,address",
        "\"address\",\"na\"\"me\"",
    ]);
    let field = weighted(vec![
        (3, "\\+1555[0-9]{7}".boxed()),
        (3, short_text()),
        (1, constant("\"unterminated".to_owned())),
    ]);
    let row = prop::collection::vec(field, 0..4).prop_map(|fields| fields.join(","));
    (header, prop::collection::vec(row, 0..12))
        .prop_map(|(header, rows)| format!("{header}\n{}\n", rows.join("\n")).into_bytes())
        .boxed()
}

/// One change to an otherwise valid body.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Value),
    Remove,
    AddUnknown(String, Value),
}

fn mutation_strategy() -> BoxedStrategy<Mutation> {
    weighted(vec![
        (
            5,
            fuzz_text()
                .prop_map(|s| Mutation::Replace(Value::String(s)))
                .boxed(),
        ),
        (2, wrong_type().prop_map(Mutation::Replace).boxed()),
        (1, constant(Mutation::Replace(Value::Null))),
        (
            2,
            integer_value(Mode::Fuzz)
                .prop_map(Mutation::Replace)
                .boxed(),
        ),
        (
            1,
            one_of_str(DATE_TIMES)
                .prop_map(|s| Mutation::Replace(Value::String(s)))
                .boxed(),
        ),
        (1, any_json().prop_map(Mutation::Replace).boxed()),
        (1, constant(Mutation::Remove)),
        (
            1,
            ("[a-z_]{1,12}", any_json())
                .prop_map(|(k, v)| Mutation::AddUnknown(k, v))
                .boxed(),
        ),
    ])
}

/// JSON Pointers to every value inside `value` (not the root).
fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => Vec::new(),
    };
    for (token, child) in children {
        let pointer = format!("{at}/{token}");
        pointers(child, &pointer, out);
        out.push(pointer);
    }
}

/// Applies `mutation` at one value of `value` chosen by `at`.
fn mutate(mut value: Value, at: Index, mutation: Mutation) -> Value {
    let mut all = Vec::new();
    pointers(&value, "", &mut all);
    if let Mutation::AddUnknown(key, extra) = mutation {
        if let Some(map) = value.as_object_mut() {
            map.insert(key, extra);
        }
        return value;
    }
    if all.is_empty() {
        return value;
    }
    let pointer = at.get(&all).clone();
    match mutation {
        Mutation::Replace(replacement) => {
            if let Some(target) = value.pointer_mut(&pointer) {
                *target = replacement;
            }
        }
        Mutation::Remove => {
            let (parent, token) = pointer.rsplit_once('/').expect("a pointer has a slash");
            match value.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&token.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = token.parse::<usize>() {
                        items.remove(i);
                    }
                }
                _ => {}
            }
        }
        Mutation::AddUnknown(..) => {}
    }
    value
}

fn body_strategy(doc: &Value, op: &Operation) -> BoxedStrategy<BodyPlan> {
    let reference = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let request_schemas = [
        "CreateCampaign",
        "UpdateCampaign",
        "RecipientImport",
        "BulkRequest",
        "ScheduleBody",
    ];
    let of = |names: &[&str], mode: Mode| {
        Union::new(
            names
                .iter()
                .map(|name| shaped(doc, &reference(name), "", 0, mode)),
        )
        .boxed()
    };
    let own_names: Vec<&str> = op.body_schemas.iter().map(String::as_str).collect();
    let own_names = if own_names.is_empty() {
        &request_schemas[..]
    } else {
        &own_names[..]
    };
    let (own_valid, own_fuzz) = (of(own_names, Mode::Valid), of(own_names, Mode::Fuzz));
    let own_mutated = (own_valid.clone(), any::<Index>(), mutation_strategy())
        .prop_map(|(value, at, mutation)| mutate(value, at, mutation));
    let (valid_weight, mutated_weight, fuzz_weight) = if op.takes_json() {
        (15, 25, 20)
    } else {
        (2, 2, 2)
    };
    let csv_weight = if op.takes_csv() { 12 } else { 2 };
    weighted(vec![
        (valid_weight, own_valid.prop_map(BodyPlan::Json).boxed()),
        (mutated_weight, own_mutated.prop_map(BodyPlan::Json).boxed()),
        (
            fuzz_weight,
            own_fuzz.clone().prop_map(BodyPlan::Json).boxed(),
        ),
        (
            5,
            of(&request_schemas, Mode::Fuzz)
                .prop_map(BodyPlan::Json)
                .boxed(),
        ),
        (8, any_json().prop_map(BodyPlan::Json).boxed()),
        (
            5,
            (own_fuzz, 0usize..1_000)
                .prop_map(|(v, p)| BodyPlan::Truncated(v, p))
                .boxed(),
        ),
        (
            4,
            prop::collection::vec(any::<u8>(), 0..200)
                .prop_map(|b| BodyPlan::Raw(Blob(b)))
                .boxed(),
        ),
        (
            4,
            invalid_utf8_body()
                .prop_map(|b| BodyPlan::Raw(Blob(b)))
                .boxed(),
        ),
        (
            3,
            deep_nesting_body()
                .prop_map(|b| BodyPlan::Raw(Blob(b)))
                .boxed(),
        ),
        (
            csv_weight,
            csv_body().prop_map(|b| BodyPlan::Csv(Blob(b))).boxed(),
        ),
        (8, constant(BodyPlan::Absent)),
        (2, constant(BodyPlan::Raw(Blob(Vec::new())))),
        (1, constant(BodyPlan::Huge)),
    ])
}

fn operation_strategy(doc: &Value, index: usize, op: &Operation) -> BoxedStrategy<Case> {
    let segments: Vec<BoxedStrategy<Segment>> = template_params(&op.template)
        .iter()
        .map(|name| {
            segment_strategy(
                op.params
                    .iter()
                    .find(|p| &p.name == name && p.location == "path"),
            )
        })
        .collect();
    let method = prop_oneof![
        24 => Just(None),
        1 => select(&OTHER_METHODS[..]).prop_map(Some),
    ];
    // A polite request has valid headers and a content type that matches its
    // body, so that only its path, query and body are random.
    let polite = prop::bool::weighted(0.4);
    (
        polite,
        method,
        segments,
        query_strategy(doc, op),
        auth_strategy(),
        if_match_strategy(),
        correlation_strategy(),
        content_type_strategy(op),
        body_strategy(doc, op),
    )
        .prop_map(
            move |(
                polite,
                method,
                segments,
                query,
                auth,
                if_match,
                correlation,
                content_type,
                body,
            )| {
                if polite {
                    let content_type = match &body {
                        BodyPlan::Absent => None,
                        BodyPlan::Csv(_) => Some(Blob(b"text/csv".to_vec())),
                        _ => Some(Blob(b"application/json".to_vec())),
                    };
                    Case {
                        op: index,
                        method: None,
                        segments,
                        query,
                        auth: Auth::Valid,
                        if_match: None,
                        correlation: None,
                        content_type,
                        body,
                    }
                } else {
                    Case {
                        op: index,
                        method,
                        segments,
                        query,
                        auth,
                        if_match,
                        correlation,
                        content_type,
                        body,
                    }
                }
            },
        )
        .boxed()
}

/// A random operation of the document, with a random request for it. Operations
/// that take no input (health) are drawn less often.
fn case_strategy(doc: &Value, ops: &[Operation]) -> BoxedStrategy<Case> {
    weighted(
        ops.iter()
            .enumerate()
            .map(|(index, op)| {
                let takes_input =
                    !op.params.is_empty() || !op.body_schemas.is_empty() || op.method != "GET";
                (
                    if takes_input { 4 } else { 1 },
                    operation_strategy(doc, index, op),
                )
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// Sending

/// The seeded campaigns and the credentials.
#[derive(Debug)]
struct World {
    addr: String,
    token: String,
    other_token: String,
    pool: sqlx::PgPool,
    /// The campaign each slot names now.
    ids: Mutex<BTreeMap<Slot, Uuid>>,
    /// Every campaign a slot has named.
    seeded: Mutex<Vec<(Slot, Uuid)>>,
}

impl World {
    fn id(&self, slot: Slot) -> Uuid {
        self.ids.lock().expect("ids")[&slot]
    }

    fn substitute(&self, value: &mut Value) {
        match value {
            Value::String(text) => {
                if let Some(slot) = text.strip_prefix(PLACEHOLDER) {
                    let slot = SLOTS
                        .iter()
                        .find(|s| format!("{s:?}") == slot)
                        .expect("a known slot");
                    *text = self.id(*slot).to_string();
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.substitute(item)),
            Value::Object(map) => map.values_mut().for_each(|item| self.substitute(item)),
            _ => {}
        }
    }
}

/// A concrete request.
struct Request {
    method: String,
    target: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

impl Request {
    fn summary(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {}", preview(value)))
            .collect();
        format!(
            "{} {} [{}] body {}",
            self.method,
            preview(self.target.as_bytes()),
            headers.join("; "),
            self.body.as_deref().map_or("absent".into(), preview)
        )
    }
}

fn render(case: &Case, op: &Operation, world: &World) -> Request {
    let mut segments = case.segments.iter().map(|segment| match segment {
        Segment::Raw(text) => text.clone(),
        Segment::Campaign(slot, format) => {
            let id = world.id(*slot);
            match format {
                IdFormat::Hyphenated => id.to_string(),
                IdFormat::Simple => id.simple().to_string(),
                IdFormat::Upper => id.to_string().to_uppercase(),
                IdFormat::Braced => encode(&id.braced().to_string()),
                IdFormat::Urn => id.urn().to_string(),
            }
        }
    });
    let mut target = String::new();
    for (i, piece) in op.template.split('{').enumerate() {
        if i == 0 {
            target.push_str(piece);
            continue;
        }
        let (_, rest) = piece.split_once('}').expect("a closed template parameter");
        target.push_str(&segments.next().expect("a segment per parameter"));
        target.push_str(rest);
    }
    if !case.query.is_empty() {
        let pairs: Vec<String> = case.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        target = format!("{target}?{}", pairs.join("&"));
    }
    let mut headers: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let token = &world.token;
    match &case.auth {
        Auth::Valid => headers.push(("Authorization", format!("Bearer {token}").into_bytes())),
        Auth::LowercaseScheme => {
            headers.push(("Authorization", format!("bearer {token}").into_bytes()))
        }
        Auth::PaddedToken => {
            headers.push(("Authorization", format!("Bearer   {token}  ").into_bytes()))
        }
        Auth::Missing => {}
        Auth::Raw(blob) => headers.push(("Authorization", blob.0.clone())),
    }
    if let Some(blob) = &case.if_match {
        headers.push(("If-Match", blob.0.clone()));
    }
    if let Some(blob) = &case.correlation {
        headers.push(("X-Correlation-Id", blob.0.clone()));
    }
    if let Some(blob) = &case.content_type {
        headers.push(("Content-Type", blob.0.clone()));
    }
    let json_text = |value: &Value| {
        let mut value = value.clone();
        world.substitute(&mut value);
        value.to_string().into_bytes()
    };
    let body = match &case.body {
        BodyPlan::Absent => None,
        BodyPlan::Json(value) => Some(json_text(value)),
        BodyPlan::Truncated(value, permille) => {
            let mut text = json_text(value);
            text.truncate(text.len() * permille / 1_000);
            Some(text)
        }
        BodyPlan::Raw(blob) | BodyPlan::Csv(blob) => Some(blob.0.clone()),
        BodyPlan::Huge => {
            Some(format!("{{\"name\":\"{}\"}}", "x".repeat(HUGE_BODY_BYTES)).into_bytes())
        }
    };
    Request {
        method: case.method.map_or_else(|| op.method.clone(), str::to_owned),
        target,
        headers,
        body,
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Result<(u16, BTreeMap<String, String>), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(body, b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        let start = line_end + 2;
        if size == 0 || body.len() < start + size {
            break;
        }
        out.extend_from_slice(&body[start..start + size]);
        body = &body[(start + size + 2).min(body.len())..];
    }
    out
}

/// Sends one request on a fresh connection and reads the response. A
/// Server-Sent Events response counts as complete once its head arrives.
async fn exchange(addr: &str, request: &Request) -> Result<Reply, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        request.method, request.target
    )
    .into_bytes();
    for (name, value) in &request.headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    if let Some(body) = &request.body {
        head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let body = request.body.clone();
    // Written on its own task: the server may answer (e.g. 413) before reading it all.
    let writing = tokio::spawn(async move {
        writer.write_all(&head).await?;
        if let Some(body) = body {
            writer.write_all(&body).await?;
        }
        writer.flush().await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let reply = loop {
        if let Some(end) = find(&received, b"\r\n\r\n") {
            let (status, headers) = parse_head(&received[..end])?;
            let body = &received[end + 4..];
            let streaming = headers
                .get("content-type")
                .is_some_and(|ct| ct.starts_with("text/event-stream"));
            let length = headers
                .get("content-length")
                .and_then(|l| l.parse::<usize>().ok());
            if streaming || length.is_some_and(|l| body.len() >= l) {
                let body = if streaming {
                    Vec::new()
                } else {
                    body[..length.unwrap_or(0)].to_vec()
                };
                break Reply {
                    status,
                    headers,
                    body,
                };
            }
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) if find(&received, b"\r\n\r\n").is_some() => {
                let end = find(&received, b"\r\n\r\n").unwrap_or_default();
                let (status, headers) = parse_head(&received[..end])?;
                let mut body = received[end + 4..].to_vec();
                if headers
                    .get("transfer-encoding")
                    .is_some_and(|te| te.contains("chunked"))
                {
                    body = dechunk(&body);
                }
                break Reply {
                    status,
                    headers,
                    body,
                };
            }
            Ok(0) => return Err("the connection closed without a response".into()),
            Err(e) => return Err(format!("read failed before a response: {e}")),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    };
    writing.abort();
    Ok(reply)
}

// ---------------------------------------------------------------------------
// Checking

#[derive(Debug, Default)]
struct Stats {
    /// Per operation label: status -> count.
    statuses: BTreeMap<String, BTreeMap<u16, u32>>,
    /// Per operation label: statuses seen that the operation does not document.
    undocumented: BTreeMap<String, BTreeSet<u16>>,
}

/// The JSON error shape, or why not.
fn error_shape(reply: &Reply) -> Result<(), String> {
    let content_type = reply.headers.get("content-type").map_or("", String::as_str);
    if !content_type.starts_with("application/json") {
        return Err(format!("content-type {content_type:?} is not JSON"));
    }
    let body: Value =
        serde_json::from_slice(&reply.body).map_err(|e| format!("body is not JSON: {e}"))?;
    let error = &body["error"];
    if !error["code"].is_string() || !error["message"].is_string() {
        return Err("no error.code and error.message strings".into());
    }
    Ok(())
}

async fn run_case(
    stack: &Stack,
    world: &World,
    ops: &[Operation],
    stats: &Mutex<Stats>,
    case: Case,
) -> Result<(), TestCaseError> {
    let op = &ops[case.op];
    let request = render(&case, op, world);
    // A swapped method is judged by the operation it names, if any.
    let judged = ops
        .iter()
        .find(|o| o.template == op.template && o.method == request.method);
    let label = judged.map_or_else(
        || format!("{} {} (undocumented)", request.method, op.template),
        Operation::label,
    );
    let started = Instant::now();
    let reply = match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&world.addr, &request)).await {
        Err(_) => {
            return Err(TestCaseError::fail(format!(
                "no response within {REQUEST_TIMEOUT:?}: {}",
                request.summary()
            )));
        }
        Ok(Err(error)) => {
            return Err(TestCaseError::fail(format!(
                "{error}: {}",
                request.summary()
            )));
        }
        Ok(Ok(reply)) => reply,
    };
    let status = reply.status;
    if std::env::var_os("HERALD_API_FUZZ_LOG").is_some() {
        eprintln!(
            "api_fuzz: {} -> {status} {}",
            request.summary(),
            preview(&reply.body)
        );
    }
    let fail = |why: String| {
        TestCaseError::fail(format!(
            "{why}\n  request: {}\n  answer after {:?}: {status} {:?} {}",
            request.summary(),
            started.elapsed(),
            reply.headers.get("content-type"),
            preview(&reply.body)
        ))
    };
    {
        let mut stats = stats.lock().expect("stats");
        *stats
            .statuses
            .entry(label.clone())
            .or_default()
            .entry(status)
            .or_default() += 1;
        if judged.is_some_and(|o| !o.responses.contains(&status)) {
            stats
                .undocumented
                .entry(label.clone())
                .or_default()
                .insert(status);
        }
    }
    if status >= 500 {
        return Err(fail(format!("{label} answered a server error")));
    }
    let documented = judged.is_some_and(|o| o.responses.contains(&status));
    if !documented && !GENERIC_STATUSES.contains(&status) {
        return Err(fail(format!(
            "{label} answered {status}, neither documented nor generic"
        )));
    }
    if status >= 400 {
        error_shape(&reply).map_err(|why| {
            fail(format!(
                "{label}: a {status} without the JSON error shape ({why})"
            ))
        })?;
    } else if status != 204
        && reply
            .headers
            .get("content-type")
            .is_some_and(|ct| ct.starts_with("application/json"))
    {
        serde_json::from_slice::<Value>(&reply.body)
            .map_err(|e| fail(format!("{label}: a {status} with a broken JSON body ({e})")))?;
    }
    restore_slots(stack, world).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// Setup and aftermath

async fn create_as(stack: &Stack, token: &str, name: &str) -> Uuid {
    let (status, body) = call(
        &stack.http,
        Method::POST,
        &stack.url("/v1/campaigns"),
        token,
        Some(json!({
            "name": name,
            "channel": {"provider": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "s3cret"},
            "template": {"body": "Hi {{ name }}"}
        })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("id").parse().expect("uuid")
}

impl Slot {
    /// The status a slot's campaign is kept in, and the actions that lead there from a draft.
    fn status(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Slot::Draft | Slot::SecondDraft | Slot::Foreign => ("draft", &[]),
            Slot::Scheduled => ("scheduled", &["schedule"]),
            Slot::Sending => ("sending", &["start"]),
            Slot::Paused => ("paused", &["start", "pause"]),
            Slot::Stopped => ("stopped", &["start", "stop"]),
        }
    }
}

/// A campaign of this tenant in `slot`'s status, with five recipients.
async fn seed_slot(stack: &Stack, slot: Slot) -> Uuid {
    let id = create_as(stack, &stack.token, &format!("fuzz {slot:?}")).await;
    stack.import(id, 5).await;
    for action in slot.status().1 {
        let body = (*action == "schedule").then(|| json!({"scheduled_at": "2099-01-01T00:00:00Z"}));
        let (status, body) = stack
            .call(Method::POST, &format!("/v1/campaigns/{id}/{action}"), body)
            .await;
        assert_eq!(status, 200, "{action}: {body}");
    }
    id
}

async fn seed_world(stack: &Stack) -> World {
    let pool = stack.env.pool();
    let other_token = tenant_token(&pool, "globex").await;
    let mut ids = BTreeMap::new();
    for slot in SLOTS {
        let id = match slot {
            Slot::Foreign => create_as(stack, &other_token, "someone else's").await,
            _ => seed_slot(stack, slot).await,
        };
        ids.insert(slot, id);
    }
    World {
        addr: stack.api.base_url.trim_start_matches("http://").to_owned(),
        token: stack.token.clone(),
        other_token,
        pool,
        seeded: Mutex::new(ids.iter().map(|(slot, id)| (*slot, *id)).collect()),
        ids: Mutex::new(ids),
    }
}

/// Replaces each seeded campaign that a request moved out of its slot's status
/// (started a draft, stopped a paused one, deleted a draft...), so every state
/// stays reachable for the whole run.
async fn restore_slots(stack: &Stack, world: &World) {
    let current: Vec<(Slot, Uuid)> = world
        .ids
        .lock()
        .expect("ids")
        .iter()
        .filter(|(slot, _)| **slot != Slot::Foreign)
        .map(|(slot, id)| (*slot, *id))
        .collect();
    let ids: Vec<Uuid> = current.iter().map(|(_, id)| *id).collect();
    let statuses: BTreeMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, status FROM campaigns WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&world.pool)
            .await
            .expect("seeded statuses")
            .into_iter()
            .collect();
    for (slot, id) in current {
        if statuses.get(&id).map(String::as_str) != Some(slot.status().0) {
            let replacement = seed_slot(stack, slot).await;
            world.ids.lock().expect("ids").insert(slot, replacement);
            world
                .seeded
                .lock()
                .expect("seeded")
                .push((slot, replacement));
        }
    }
}

async fn foreign_campaign(stack: &Stack, world: &World) -> Value {
    let (status, body) = call(
        &stack.http,
        Method::GET,
        &stack.url(&format!("/v1/campaigns/{}", world.id(Slot::Foreign))),
        &world.other_token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The api still works and nothing it stores is inconsistent.
async fn assert_no_lasting_damage(stack: &Stack, world: &World, foreign_before: &Value) {
    let response = stack
        .http
        .get(stack.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.json::<Value>().await.expect("JSON")["status"],
        "ok"
    );

    let id = stack.create_campaign(json!({"provider": "log"})).await;
    stack.import(id, 3).await;
    let (status, body) = stack.transition(id, "start").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("sending")),
        "{body}"
    );
    let (status, body) = stack.transition(id, "pause").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("paused")),
        "{body}"
    );

    // Every campaign of the tenant, seeded or made by the fuzz, matches its ledger.
    let pool = stack.env.pool();
    let tenant_campaigns: Vec<Uuid> = sqlx::query_scalar(
        "SELECT c.id FROM campaigns c JOIN tenants t ON t.id = c.tenant_id WHERE t.name = 'acme'",
    )
    .fetch_all(&pool)
    .await
    .expect("campaign ids");
    for campaign in &tenant_campaigns {
        let body = stack.campaign(*campaign).await;
        assert_counters_match_ledger(&pool, *campaign, &body).await;
    }
    // A seeded campaign may be gone only as a deleted draft (a scheduled one can
    // be unscheduled first); then its ledger is gone too.
    let seeded = world.seeded.lock().expect("seeded").clone();
    for (slot, campaign) in &seeded {
        if *slot != Slot::Foreign && !tenant_campaigns.contains(campaign) {
            assert!(
                matches!(slot, Slot::Draft | Slot::SecondDraft | Slot::Scheduled),
                "{slot:?} campaign disappeared"
            );
            assert!(
                ledger_counts(&pool, *campaign).await.is_empty(),
                "{slot:?} left rows behind"
            );
        }
    }
    // The other tenant's campaign was never touched.
    let foreign_after = foreign_campaign(stack, world).await;
    assert_eq!(
        foreign_after["version"], foreign_before["version"],
        "{foreign_after}"
    );
    assert_eq!(foreign_after["status"], "draft");
    assert_counters_match_ledger(&pool, world.id(Slot::Foreign), &foreign_after).await;
    eprintln!(
        "api_fuzz: {} campaigns of the tenant ({} seeded) match their ledgers",
        tenant_campaigns.len(),
        seeded.len() - 1
    );
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn fuzz_runner() -> (TestRunner, u64, u32) {
    let seed = env_number("HERALD_API_FUZZ_SEED").unwrap_or(SEED);
    let cases = env_number("HERALD_API_FUZZ_CASES").map_or(CASES, |n| n as u32);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        // Each shrink step is a request; a hang costs 10 s each.
        max_shrink_iters: 200,
        max_shrink_time: 30_000,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    (TestRunner::new_with_rng(config, rng), seed, cases)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn random_requests_to_every_documented_operation_get_no_server_error_no_hang_and_the_json_error_shape()
 {
    let rt = runtime();
    let stack = rt.block_on(Stack::start(0, 0, test_sender_config()));
    let doc = rt.block_on(fetch_openapi(&stack));
    let ops = operations(&doc);
    for op in &ops {
        eprintln!(
            "api_fuzz: operation {:<40} body {:?} documents {:?}",
            op.label(),
            op.body_schemas,
            op.responses
        );
    }
    let world = rt.block_on(seed_world(&stack));
    let foreign_before = rt.block_on(foreign_campaign(&stack, &world));
    let stats = Mutex::new(Stats::default());
    let strategy = case_strategy(&doc, &ops);
    let (mut runner, seed, cases) = fuzz_runner();
    let started = Instant::now();
    let outcome = runner.run(&strategy, |case| {
        rt.block_on(run_case(&stack, &world, &ops, &stats, case))
    });
    let stats = stats.into_inner().expect("stats");
    eprintln!(
        "api_fuzz: {cases} cases, seed {seed:#x}, in {:?}",
        started.elapsed()
    );
    for (label, statuses) in &stats.statuses {
        eprintln!("api_fuzz: {label:<48} {statuses:?}");
    }
    for (label, statuses) in &stats.undocumented {
        eprintln!("api_fuzz: undocumented: {label} answered {statuses:?}");
    }
    if let Err(error) = outcome {
        rt.block_on(stack.stop());
        panic!("api fuzz (seed {seed:#x}) failed: {error}");
    }
    rt.block_on(assert_no_lasting_damage(&stack, &world, &foreign_before));
    rt.block_on(stack.stop());
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_with_its_parameters_where_the_api_reads_them() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let doc = fetch_openapi(&stack).await;
    let ops = operations(&doc);
    let listed: BTreeSet<String> = ops.iter().map(Operation::label).collect();
    let expected: BTreeSet<String> = [
        "POST /v1/channels",
        "GET /v1/channels",
        "GET /v1/channels/{id}",
        "PATCH /v1/channels/{id}",
        "DELETE /v1/channels/{id}",
        "POST /v1/channels/{id}/receipts-token",
        "POST /v1/campaigns/{id}/receipts-token",
        "POST /v1/campaigns",
        "GET /v1/campaigns",
        "GET /v1/campaigns/{id}",
        "PATCH /v1/campaigns/{id}",
        "DELETE /v1/campaigns/{id}",
        "POST /v1/campaigns/{id}/duplicate",
        "POST /v1/campaigns/{id}/retry",
        "POST /v1/campaigns/{id}/{action}",
        "POST /v1/campaigns/{id}/ab/winner",
        "POST /v1/campaigns/bulk/{action}",
        "GET /v1/campaigns/{id}/events",
        "GET /v1/campaigns/{id}/progress",
        "POST /v1/campaigns/{id}/recipients",
        "GET /v1/campaigns/{id}/recipients",
        "POST /v1/suppressions",
        "GET /v1/suppressions",
        "DELETE /v1/suppressions/{address}",
        "POST /v1/receipts/{channel_id}/{token}",
        "POST /v1/receipts/{channel_id}/{token}/{event}",
        "GET /v1/replicas",
        "GET /healthz",
        "GET /readyz",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(listed, expected);

    let bodies: BTreeMap<String, Vec<String>> = ops
        .iter()
        .filter(|op| !op.body_schemas.is_empty())
        .map(|op| (op.label(), op.body_schemas.clone()))
        .collect();
    let expected_bodies: BTreeMap<String, Vec<String>> = [
        ("POST /v1/channels", "CreateChannel"),
        ("PATCH /v1/channels/{id}", "UpdateChannel"),
        ("POST /v1/campaigns", "CreateCampaign"),
        ("PATCH /v1/campaigns/{id}", "UpdateCampaign"),
        ("POST /v1/campaigns/{id}/retry", "RetryRequest"),
        ("POST /v1/campaigns/{id}/{action}", "ScheduleBody"),
        ("POST /v1/campaigns/{id}/ab/winner", "WinnerBody"),
        ("POST /v1/campaigns/bulk/{action}", "BulkRequest"),
        ("POST /v1/campaigns/{id}/recipients", "RecipientImport"),
        ("POST /v1/suppressions", "SuppressionImport"),
    ]
    .into_iter()
    .map(|(label, schema)| (label.to_owned(), vec![schema.to_owned()]))
    .collect();
    assert_eq!(bodies, expected_bodies);

    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for op in &ops {
        let label = op.label();
        assert!(!op.responses.is_empty(), "{label} documents no response");
        for schema in &op.body_schemas {
            assert!(schemas.contains_key(schema), "{label}: no schema {schema}");
        }
        // A path parameter is one the template has, and the other way round.
        let mut in_path: Vec<String> = op
            .params
            .iter()
            .filter(|p| p.location == "path")
            .map(|p| p.name.clone())
            .collect();
        in_path.sort();
        let mut in_template = template_params(&op.template);
        in_template.sort();
        assert_eq!(in_path, in_template, "{label}: path parameters");
        for param in &op.params {
            assert!(
                ["path", "query", "header"].contains(&param.location.as_str()),
                "{label}: {} in {}",
                param.name,
                param.location
            );
            if param.location == "path" {
                assert!(
                    param.required,
                    "{label}: path parameter {} not required",
                    param.name
                );
            }
        }
        // Secured operations say what happens without a valid token. The
        // receipts endpoint takes no API token (its path carries the
        // credential, and a wrong one is a 404).
        if op.template.starts_with("/v1/") && !op.template.starts_with("/v1/receipts/") {
            assert!(op.responses.contains(&401), "{label} does not document 401");
        }
    }
    let channels_query: BTreeMap<&str, bool> = ops
        .iter()
        .find(|op| op.label() == "GET /v1/channels")
        .expect("listed")
        .params
        .iter()
        .filter(|p| p.location == "query")
        .map(|p| (p.name.as_str(), p.required))
        .collect();
    assert_eq!(
        channels_query,
        BTreeMap::from([("cursor", false), ("limit", false)])
    );
    // The list filters are optional query parameters.
    for (label, filters) in [
        ("GET /v1/campaigns", &["status"][..]),
        (
            "GET /v1/campaigns/{id}/recipients",
            &["reason", "status"][..],
        ),
    ] {
        let op = ops.iter().find(|op| op.label() == label).expect("listed");
        let query: BTreeMap<&str, bool> = op
            .params
            .iter()
            .filter(|p| p.location == "query")
            .map(|p| (p.name.as_str(), p.required))
            .collect();
        let mut expected = BTreeMap::from([("cursor", false), ("limit", false)]);
        expected.extend(filters.iter().map(|f| (*f, false)));
        assert_eq!(query, expected, "{label}");
    }
    // An acknowledged pause or stop: both optional.
    let transition: BTreeMap<&str, bool> = ops
        .iter()
        .find(|op| op.label() == "POST /v1/campaigns/{id}/{action}")
        .expect("listed")
        .params
        .iter()
        .filter(|p| p.location == "query")
        .map(|p| (p.name.as_str(), p.required))
        .collect();
    assert_eq!(
        transition,
        BTreeMap::from([("timeout_ms", false), ("wait", false)])
    );
    let suppressions = ops
        .iter()
        .find(|op| op.label() == "GET /v1/suppressions")
        .expect("listed");
    let query: BTreeMap<&str, bool> = suppressions
        .params
        .iter()
        .filter(|p| p.location == "query")
        .map(|p| (p.name.as_str(), p.required))
        .collect();
    assert_eq!(
        query,
        BTreeMap::from([("address", false), ("cursor", false), ("limit", false)])
    );
    stack.stop().await;
}

/// One request with a raw body: `(status, content type, JSON or text body)`.
async fn send_raw(
    stack: &Stack,
    method: Method,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String, Value) {
    let response = stack
        .http
        .request(method, stack.url(path))
        .bearer_auth(&stack.token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, content_type, body)
}

#[tokio::test]
async fn the_requests_the_fuzz_found_answering_500_or_a_plain_text_413_get_a_json_4xx() {
    let stack = Stack::start(0, 0, test_sender_config()).await;
    let draft = stack.create_campaign(json!({"provider": "log"})).await;
    let valid = json!({
        "name": "n", "channel": {"provider": "log"}, "template": {"body": "Hi {{ name }}"}
    });
    let with = |path: &[&str], value: Value| {
        let mut body = valid.clone();
        let mut field = &mut body;
        for key in path {
            field = &mut field[*key];
        }
        *field = value;
        body
    };
    let webhook =
        json!({"provider": "webhook", "url": "http://127.0.0.1:9/x", "secret": "a\u{0}b"});
    let nul = json!("a\u{0}b");
    let too_early = json!("-4714-11-23T00:00:00Z");
    let patch = format!("/v1/campaigns/{draft}");
    let stop = format!("/v1/campaigns/{draft}/stop");
    let start = format!("/v1/campaigns/{draft}/start");
    // Postgres text and jsonb cannot hold U+0000, nor timestamps before 4713 BC.
    let refused: Vec<(Method, &str, Value, &str)> = vec![
        (
            Method::POST,
            "/v1/campaigns",
            with(&["name"], nul.clone()),
            "name",
        ),
        (
            Method::POST,
            "/v1/campaigns",
            with(&["template", "body"], nul.clone()),
            "template.body",
        ),
        (
            Method::POST,
            "/v1/campaigns",
            with(&["channel"], webhook),
            "channel",
        ),
        (
            Method::POST,
            "/v1/campaigns",
            with(&["scheduled_at"], too_early.clone()),
            "scheduled_at",
        ),
        (Method::PATCH, &patch, json!({"name": nul}), "name"),
        (
            Method::PATCH,
            &patch,
            json!({"scheduled_at": too_early}),
            "scheduled_at",
        ),
        (
            Method::POST,
            &stop,
            json!({"scheduled_at": too_early}),
            "scheduled_at",
        ),
    ];
    for (method, path, body, field) in refused {
        let (status, _, answer) = send_raw(
            &stack,
            method.clone(),
            path,
            "application/json",
            body.to_string(),
        )
        .await;
        assert_eq!(status, 422, "{method} {path} {body}: {answer}");
        assert_eq!(answer["error"]["code"], "validation_failed", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(field),
            "{answer}"
        );
    }
    // In an import, such a row is rejected with its reason and the others are kept.
    let import = format!("/v1/campaigns/{draft}/recipients");
    let recipients = json!({"recipients": [
        {"address": "+15550001", "variables": {"k": "a\u{0}b"}},
        {"address": "+15550002", "variables": {"a\u{0}b": "v"}},
        {"address": "+15550003", "variables": {"k": "v"}},
    ]});
    let csv = "address,name\n+15550004,a\0b\n+15550005,Bo\n";
    for (content_type, body) in [
        ("application/json", recipients.to_string()),
        ("text/csv", csv.to_owned()),
    ] {
        let (status, _, answer) = send_raw(&stack, Method::POST, &import, content_type, body).await;
        assert_eq!(status, 200, "{content_type}: {answer}");
        assert_eq!(answer["accepted"], 1, "{content_type}: {answer}");
        assert_eq!(
            answer["rejected"],
            answer["rejected_rows"].as_array().map_or(0, Vec::len)
        );
        for row in answer["rejected_rows"].as_array().expect("rejected rows") {
            assert!(
                row["reason"] == "invalid_variables"
                    && row["message"].as_str().unwrap_or_default().contains("NUL"),
                "{answer}"
            );
        }
    }
    assert_counters_match_ledger(&stack.env.pool(), draft, &stack.campaign(draft).await).await;
    // A transition's body over the 1 MiB limit: 413 in the JSON error shape.
    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(HUGE_BODY_BYTES));
    let (status, content_type, answer) =
        send_raw(&stack, Method::POST, &start, "application/json", huge).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(answer["error"]["code"], "payload_too_large", "{answer}");
    // None of it changed the draft.
    let campaign = stack.campaign(draft).await;
    assert_eq!(
        (campaign["status"].as_str(), campaign["name"].as_str()),
        (Some("draft"), Some("test campaign"))
    );
    stack.stop().await;
}
