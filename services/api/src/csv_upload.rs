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
