//! Streamed CSV uploads (recipient imports, suppression lists): the request body
//! read as it arrives under a byte limit, and the checks of the header line.
//!
//! A body without `Content-Length` can only be found too large while it is read;
//! the reader then fails with an I/O error wrapping [`BodyTooLarge`], which
//! [`is_body_too_large`] recognises so the handler can answer 413.

use axum::body::Body;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{ApiError, ApiResult};

/// Marker error for a body over the upload limit.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body too large")
    }
}

impl std::error::Error for BodyTooLarge {}

/// True if the CSV reader failed because the body passed the limit.
pub fn is_body_too_large(error: &csv_async::Error) -> bool {
    match error.kind() {
        csv_async::ErrorKind::Io(io) => {
            io.get_ref().is_some_and(|inner| inner.is::<BodyTooLarge>())
        }
        _ => false,
    }
}

/// True if a CSV header line was written in UTF-16: it starts with a UTF-16 byte
/// order mark, or has NUL bytes (every ASCII character of UTF-16 has one).
pub fn looks_like_utf16(headers: &csv_async::ByteRecord) -> bool {
    let first = headers.get(0).unwrap_or_default();
    first.starts_with(&[0xFF, 0xFE])
        || first.starts_with(&[0xFE, 0xFF])
        || headers.iter().any(|field| field.contains(&0))
}

/// A flexible CSV reader over `body` that fails with [`BodyTooLarge`] once more
/// than `limit` bytes have arrived.
pub fn limited_csv_reader(
    body: Body,
    limit: usize,
) -> csv_async::AsyncReader<impl tokio::io::AsyncRead + Unpin + Send> {
    let seen = Arc::new(AtomicUsize::new(0));
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        if seen.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len() > limit {
            return Err(std::io::Error::other(BodyTooLarge));
        }
        Ok(chunk)
    });
    csv_async::AsyncReaderBuilder::new()
        .flexible(true)
        .create_reader(tokio_util::io::StreamReader::new(stream))
}

/// The header names as text: trimmed, without a UTF-8 byte order mark.
pub fn header_names(headers: &csv_async::ByteRecord) -> Vec<String> {
    headers
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim()
                .trim_start_matches('\u{feff}')
                .trim()
                .to_owned()
        })
        .collect()
}

/// A streamed CSV upload with its header line read and checked.
pub struct CsvUpload<R> {
    pub reader: csv_async::AsyncReader<R>,
    /// The header names, as [`header_names`] gives them.
    pub headers: Vec<String>,
}

impl<R> std::fmt::Debug for CsvUpload<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvUpload")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// Opens `body` as a CSV upload of at most `limit` bytes and reads its header
/// line. Errors: 413 past the limit, 422 for an unreadable or UTF-16 header line.
pub async fn open_csv_upload(
    body: Body,
    limit: usize,
) -> ApiResult<CsvUpload<impl tokio::io::AsyncRead + Unpin + Send>> {
    let mut reader = limited_csv_reader(body, limit);
    let headers = match reader.byte_headers().await {
        Ok(h) => h.clone(),
        Err(e) if is_body_too_large(&e) => return Err(ApiError::payload_too_large(limit)),
        Err(_) => return Err(ApiError::validation("could not read the CSV header line")),
    };
    if looks_like_utf16(&headers) {
        return Err(ApiError::validation(
            "the CSV is not UTF-8: it looks like UTF-16 (a byte order mark or NUL bytes in \
             the header line); save it as UTF-8 (\"CSV UTF-8\" in Excel) and upload it again",
        ));
    }
    Ok(CsvUpload {
        headers: header_names(&headers),
        reader,
    })
}

/// Why one row of an upload cannot be used.
#[derive(Debug)]
pub enum RowProblem {
    /// The body passed the limit: the whole upload ends with 413.
    TooLarge,
    /// The connection broke: the whole upload ends with 400.
    Interrupted,
    /// This row alone is rejected, for this reason (for people).
    Malformed(String),
}

/// The 400 of an upload whose connection broke mid-body.
pub fn upload_interrupted() -> ApiError {
    ApiError::bad_request("the upload was interrupted")
}

/// One record as read, checked to have one field per header.
pub fn checked_record(
    record: Result<csv_async::ByteRecord, csv_async::Error>,
    header_count: usize,
) -> Result<csv_async::ByteRecord, RowProblem> {
    let record = match record {
        Ok(record) => record,
        Err(e) if is_body_too_large(&e) => return Err(RowProblem::TooLarge),
        Err(e) if matches!(e.kind(), csv_async::ErrorKind::Io(_)) => {
            return Err(RowProblem::Interrupted);
        }
        Err(e) => return Err(RowProblem::Malformed(format!("unreadable CSV row: {e}"))),
    };
    if record.len() != header_count {
        return Err(RowProblem::Malformed(format!(
            "row has {} fields but the header has {header_count}",
            record.len()
        )));
    }
    Ok(record)
}
