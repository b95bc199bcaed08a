//! Import limits: what the api does with big, oversized and malformed uploads.
//!
//! - A 1,000,000-row CSV is streamed (chunked, generated while it is sent) to the
//!   api running as its own OS process, so its memory can be read from
//!   `/proc/<pid>/status`: every row is accepted in one request, and the peak
//!   resident set size stays under a fixed bound, i.e. the import is streamed,
//!   not buffered.
//! - Bodies over `HERALD_MAX_BODY_BYTES` (JSON) and `HERALD_MAX_IMPORT_BYTES`
//!   (imports) answer 413 with the JSON error shape, with a `Content-Length` and
//!   chunked (no `Content-Length`, so the limit is only found while reading).
//! - A CSV in UTF-16 is refused with a 422 that says so, a Latin-1 file gets
//!   per-row rejections, and a CSV without an `address` column is a 422.
//!
//! Run with `cargo test -p herald --test import_limits`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_api::ApiConfig;
use herald_testkit::faults::{HeraldEnv, HeraldProcess, rss_kib, wait_until};
use herald_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn herald() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herald"))
}

/// The JSON error shape every endpoint answers with.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

// ---------------------------------------------------------------------------
// A million rows, streamed to an api process
// ---------------------------------------------------------------------------

/// Peak RSS bound for the api process (debug build) while it imports 1,000,000
/// CSV rows (about 25 MB) in one streamed request.
///
/// Measured on the 2-core test machine (debug build, several runs): VmHWM is
/// about 36 MiB once the api is up (migrations, pools, NATS) and about 42 MiB
/// after the import, so the import itself costs about 6 MiB. It holds one
/// 2,000-row chunk (addresses, variables and the Postgres bind buffer) and
/// hyper's read buffer, whatever the file's size. A buffered import would hold
/// the whole body (25 MB) plus a million parsed rows (a `String` and a
/// `serde_json` map each, some hundreds of bytes per row), far above this
/// bound. 128 MiB is three times the measured peak: headroom for allocator
/// arenas and machine noise, while still catching a buffered import.
const PEAK_RSS_BOUND_KIB: u64 = 128 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_csv_streamed_to_an_api_process_is_accepted_in_one_request_with_bounded_peak_memory()
 {
    const ROWS: usize = 1_000_000;
    const ROWS_PER_CHUNK: usize = 10_000;
    let env = TestEnv::new().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let process_env = HeraldEnv::for_test(&env.common.database_url, &env.common.nats_url, "unused")
        .set("HERALD_SUBJECT_PREFIX", &env.common.subject_prefix)
        .set("HERALD_STREAM_PREFIX", &env.common.stream_prefix)
        .set("HERALD_LISTEN", &listen)
        .set("HERALD_DB_MAX_CONNECTIONS", "4")
        .set("HERALD_LOG", "warn");
    let mut api = HeraldProcess::spawn("api", herald(), &["api"], process_env, None);
    let base = format!("http://{listen}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client");
    wait_until(
        "the api process to be ready",
        Duration::from_secs(60),
        || async {
            let response = http.get(format!("{base}/readyz")).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;
    let token = tenant_token(&env.pool(), "acme").await;
    let (status, created) = call(
        &http,
        Method::POST,
        &format!("{base}/v1/campaigns"),
        &token,
        Some(json!({"name": "a million", "channel": {"provider": "log"},
                    "template": {"body": "Hi {{ name }}"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    let pid = api.pid().expect("api pid");
    let idle_kib = api.peak_rss_kib().expect("VmHWM of the api");

    // Samples VmRSS while the import runs, for the report.
    let done = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn({
        let (done, max_rss) = (done.clone(), max_rss.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    max_rss.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // Generated while it is sent: no Content-Length, one chunk per 10,000 rows.
    let sent = Arc::new(AtomicU64::new(0));
    let chunks = futures::stream::iter((0..ROWS).step_by(ROWS_PER_CHUNK)).map({
        let sent = sent.clone();
        move |start| {
            let mut chunk = String::with_capacity(ROWS_PER_CHUNK * 32);
            if start == 0 {
                chunk.push_str("address,name,segment\n");
            }
            for n in start..(start + ROWS_PER_CHUNK).min(ROWS) {
                chunk.push_str(&format!("+1555{n:08},r{n},s{}\n", n % 7));
            }
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(bytes::Bytes::from(chunk))
        }
    });
    let started = Instant::now();
    let response = http
        .post(format!("{base}/v1/campaigns/{id}/recipients"))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("import sent");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("import result");
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let peak_kib = api.peak_rss_kib().expect("VmHWM of the api");
    println!(
        "imported {ROWS} CSV rows ({} bytes, chunked) in {took:?}; api RSS: idle peak {} MiB, \
         sampled max {} MiB, peak (VmHWM) {} MiB, bound {} MiB",
        sent.load(Ordering::Relaxed),
        idle_kib / 1024,
        max_rss.load(Ordering::Relaxed) / 1024,
        peak_kib / 1024,
        PEAK_RSS_BOUND_KIB / 1024
    );
    assert_eq!(status, 200, "{body}\n{}", api.log());
    assert_eq!(body["accepted"], ROWS as u64, "{body}");
    assert_eq!(body["duplicates"], 0, "{body}");
    assert_eq!(body["rejected"], 0, "{body}");
    assert!(
        peak_kib < PEAK_RSS_BOUND_KIB,
        "the api's peak RSS was {peak_kib} KiB importing {ROWS} rows; the bound is \
         {PEAK_RSS_BOUND_KIB} KiB, so the import is no longer streamed"
    );
    let (status, campaign) = call(
        &http,
        Method::GET,
        &format!("{base}/v1/campaigns/{id}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{campaign}");
    assert_eq!(campaign["counters"]["total"], ROWS as u64, "{campaign}");
    assert_counters_match_ledger(&env.pool(), id, &campaign).await;
    assert!(api.is_running(), "the api survived the import");
    drop(api);
    env.cleanup().await;
}

// ---------------------------------------------------------------------------
// Limits and malformed files, on an in-process api with small limits
// ---------------------------------------------------------------------------

const JSON_LIMIT: usize = 16 * 1024;
const IMPORT_LIMIT: usize = 64 * 1024;

/// How a raw request carries its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    ContentLength,
    Chunked,
}

/// POSTs `body` in 8 KiB pieces over a plain socket, framed as asked. The
/// response is read while the body is still being written (a server may answer
/// 413 before it has read everything, and then close), so a refused upload
/// still yields its response. Returns the status and the JSON (or text) body.
async fn raw_post(
    api: &RunningApi,
    token: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    framing: Framing,
) -> (u16, Value) {
    let addr = api.base_url.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = socket.into_split();
    let length_header = match framing {
        Framing::ContentLength => format!("Content-Length: {}", body.len()),
        Framing::Chunked => "Transfer-Encoding: chunked".to_owned(),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\n{length_header}\r\nConnection: close\r\n\r\n"
    );
    // The write half is handed back, not dropped: dropping it sends a FIN, and
    // hyper (without half-close) would drop the connection before answering.
    let write = tokio::spawn(async move {
        let result = async {
            writer.write_all(head.as_bytes()).await?;
            for piece in body.chunks(8 * 1024) {
                if framing == Framing::Chunked {
                    writer
                        .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .await?;
                }
                writer.write_all(piece).await?;
                if framing == Framing::Chunked {
                    writer.write_all(b"\r\n").await?;
                }
            }
            if framing == Framing::Chunked {
                writer.write_all(b"0\r\n\r\n").await?;
            }
            writer.flush().await
        }
        .await;
        (result, writer)
    });
    let mut response = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    // Read until the server closes; a reset after the response is complete is fine.
    while let Ok(n) = reader.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buffer[..n]);
    }
    // The writer fails (broken pipe) when the server stopped reading: expected.
    let _ = write.await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an incomplete response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// Decodes a chunked response body (sizes in hex, each chunk followed by CRLF).
fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A CSV of `rows` valid rows (each about 20 bytes).
fn csv_rows(rows: usize) -> Vec<u8> {
    let mut csv = String::from("address,name\n");
    for n in 0..rows {
        csv.push_str(&format!("+1555{n:08},r{n}\n"));
    }
    csv.into_bytes()
}

/// UTF-16LE with a byte order mark, as Excel's "Unicode text" and many Windows
/// tools write it.
fn utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    bytes
}

async fn total(api: &RunningApi, token: &str, id: Uuid) -> u64 {
    let http = reqwest::Client::new();
    let (status, body) = call(
        &http,
        Method::GET,
        &format!("{}/v1/campaigns/{id}", api.base_url),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["counters"]["total"].as_u64().expect("total")
}

#[tokio::test]
async fn bodies_over_the_limits_answer_413_with_the_json_error_shape_with_or_without_content_length()
 {
    let env = TestEnv::new().await;
    let api = RunningApi::start(
        env.replica("api-0"),
        ApiConfig {
            max_body_bytes: JSON_LIMIT,
            max_import_bytes: IMPORT_LIMIT,
            relay_interval_ms: 200,
            scheduler_interval_ms: 200,
            ..ApiConfig::default()
        },
    )
    .await;
    let token = tenant_token(&env.pool(), "acme").await;
    let http = reqwest::Client::new();
    let (status, created) = call(
        &http,
        Method::POST,
        &format!("{}/v1/campaigns", api.base_url),
        &token,
        Some(json!({"name": "limits", "channel": {"provider": "log"},
                    "template": {"body": "Hi {{ name }}"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    let import_path = format!("/v1/campaigns/{id}/recipients");

    // A JSON body over HERALD_MAX_BODY_BYTES (a campaign with a 20 KiB name).
    let big_json = serde_json::to_vec(&json!({
        "name": "n".repeat(20 * 1024), "channel": {"provider": "log"},
        "template": {"body": "Hi"}
    }))
    .expect("json");
    assert!(big_json.len() > JSON_LIMIT);
    for framing in [Framing::ContentLength, Framing::Chunked] {
        let (status, body) = raw_post(
            &api,
            &token,
            "/v1/campaigns",
            "application/json",
            big_json.clone(),
            framing,
        )
        .await;
        assert_error(status, &body, 413, "payload_too_large");
        println!("JSON over the body limit, {framing:?}: {body}");
    }

    // A CSV import over HERALD_MAX_IMPORT_BYTES: 200 KiB against 64 KiB.
    let big_csv = csv_rows(10_000);
    assert!(big_csv.len() > 3 * IMPORT_LIMIT);
    let (status, body) = raw_post(
        &api,
        &token,
        &import_path,
        "text/csv",
        big_csv.clone(),
        Framing::ContentLength,
    )
    .await;
    assert_error(status, &body, 413, "payload_too_large");
    println!("CSV over the import limit, with Content-Length: {body}");
    assert_eq!(
        total(&api, &token, id).await,
        0,
        "refused from its Content-Length before a byte was read"
    );
    let (status, body) = raw_post(
        &api,
        &token,
        &import_path,
        "text/csv",
        big_csv,
        Framing::Chunked,
    )
    .await;
    assert_error(status, &body, 413, "payload_too_large");
    println!("CSV over the import limit, chunked: {body}");
    // Without Content-Length the limit is found while importing: the rows of
    // chunks already stored stay (2,000 rows per chunk), and the 413 says so.
    let after_chunked = total(&api, &token, id).await;
    assert!(after_chunked < 10_000, "{after_chunked}");
    if after_chunked > 0 {
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!(
                "the first {after_chunked} rows were imported before the limit"
            )),
            "a partial import is reported: {message}"
        );
    }

    // A JSON import over the import limit, both ways.
    let recipients: Vec<Value> = (0..5_000)
        .map(|n| json!({"address": format!("+1666{n:08}")}))
        .collect();
    let big_import = serde_json::to_vec(&json!({ "recipients": recipients })).expect("json");
    assert!(big_import.len() > IMPORT_LIMIT);
    for framing in [Framing::ContentLength, Framing::Chunked] {
        let (status, body) = raw_post(
            &api,
            &token,
            &import_path,
            "application/json",
            big_import.clone(),
            framing,
        )
        .await;
        assert_error(status, &body, 413, "payload_too_large");
    }
    assert_eq!(total(&api, &token, id).await, after_chunked);

    // Just under the limits, both work, and the api is none the worse.
    let small_csv = csv_rows(2_500);
    assert!(small_csv.len() < IMPORT_LIMIT);
    for framing in [Framing::ContentLength, Framing::Chunked] {
        let (status, body) = raw_post(
            &api,
            &token,
            &import_path,
            "text/csv",
            small_csv.clone(),
            framing,
        )
        .await;
        assert_eq!(status, 200, "{framing:?}: {body}");
        assert_eq!(
            body["accepted"].as_u64().unwrap_or(0) + body["duplicates"].as_u64().unwrap_or(0),
            2_500,
            "{body}"
        );
    }
    assert_eq!(total(&api, &token, id).await, 2_500);
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_csv_in_utf16_is_refused_with_a_422_that_names_the_encoding_latin1_rows_are_rejected_and_no_address_column_is_a_422()
 {
    let env = TestEnv::new().await;
    let api = RunningApi::start(env.replica("api-0"), ApiConfig::default()).await;
    let token = tenant_token(&env.pool(), "acme").await;
    let http = reqwest::Client::new();
    let (status, created) = call(
        &http,
        Method::POST,
        &format!("{}/v1/campaigns", api.base_url),
        &token,
        Some(json!({"name": "encodings", "channel": {"provider": "log"},
                    "template": {"body": "Hi {{ name }}"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    let import_path = format!("/v1/campaigns/{id}/recipients");
    let import = |csv: Vec<u8>| {
        raw_post(
            &api,
            &token,
            &import_path,
            "text/csv",
            csv,
            Framing::ContentLength,
        )
    };

    // UTF-16LE with a BOM: the whole file is refused, and the message says why.
    let (status, body) = import(utf16le_with_bom(
        "address,name\r\n+15550001,Ann\r\n+15550002,Bob\r\n",
    ))
    .await;
    assert_error(status, &body, 422, "validation_failed");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    println!("UTF-16LE with BOM: {body}");
    assert!(
        message.contains("UTF-16") && message.contains("UTF-8"),
        "the message names the encoding found and the one expected: {message}"
    );
    // UTF-16 without a BOM (NUL bytes in the header) gets the same answer.
    let mut no_bom = utf16le_with_bom("address,name\n+15550001,Ann\n");
    no_bom.drain(..2);
    let (status, body) = import(no_bom).await;
    assert_error(status, &body, 422, "validation_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("UTF-16")),
        "{body}"
    );
    assert_eq!(total(&api, &token, id).await, 0, "nothing was imported");

    // Latin-1 (Windows-1252): ASCII rows import, the others are rejected by row.
    let (status, body) = import(b"address,name\n+15550001,Ann\n+15550002,Jos\xe9\n".to_vec()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(body["rejected"], 1, "{body}");
    assert_eq!(body["rejected_rows"][0]["row"], 2, "{body}");
    assert_eq!(
        body["rejected_rows"][0]["reason"], "malformed_row",
        "{body}"
    );
    assert_eq!(
        body["rejected_rows"][0]["message"], "row is not valid UTF-8",
        "{body}"
    );

    // Missing columns: no address column (`address` or an alias such as `email`
    // or `phone`), or only a header line without it.
    for csv in [
        &b"e-mail,name\nann@example.com,Ann\n"[..],
        b"mobile\n+15550003\n",
        b"name,city\n",
    ] {
        let (status, body) = import(csv.to_vec()).await;
        assert_error(status, &body, 422, "validation_failed");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("address")),
            "{body}"
        );
    }
    assert_eq!(total(&api, &token, id).await, 1);
    api.stop().await;
    env.cleanup().await;
}
