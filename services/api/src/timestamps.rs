//! `scheduled_at` as request bodies carry it: an RFC 3339 time with a UTC offset.
//!
//! A time without an offset (`2030-05-01T09:00:00`) is ambiguous: nine o'clock
//! where? Rather than guess UTC, the API refuses it with a message that says
//! what to add, instead of the date parser's "premature end of input".

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer};

/// Serde `deserialize_with` for an optional `scheduled_at`: `null` or absent is
/// None; a string must pass [`parse_scheduled_at`].
pub fn scheduled_at<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) => parse_scheduled_at(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Reads an RFC 3339 time with an offset (`Z` or `±HH:MM`; a space instead of
/// `T` is accepted, as before). The error says what is missing.
pub fn parse_scheduled_at(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = text.parse::<DateTime<FixedOffset>>() {
        return Ok(at.with_timezone(&Utc));
    }
    let trimmed = text.trim();
    if let Some(naive) = naive_date_time(trimmed) {
        let written = naive.format("%Y-%m-%dT%H:%M:%S");
        return Err(format!(
            "`{trimmed}` has no UTC offset, so the time is ambiguous: add one, \
             `{written}Z` for UTC or the local offset such as `{written}-03:00`"
        ));
    }
    if trimmed.parse::<NaiveDate>().is_ok() {
        return Err(format!(
            "`{trimmed}` is a date without a time: give a time and a UTC offset, \
             e.g. `{trimmed}T09:00:00Z`"
        ));
    }
    Err(format!(
        "`{}` is not a time: use RFC 3339 with a UTC offset, e.g. \
         `2030-05-01T09:00:00Z` or `2030-05-01T09:00:00-03:00`",
        trimmed.chars().take(64).collect::<String>()
    ))
}

/// A date and time without an offset, with `T` or a space, with or without
/// seconds.
fn naive_date_time(text: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_an_offset_are_read_in_utc() {
        let at = parse_scheduled_at("2030-05-01T09:00:00-03:00").unwrap();
        assert_eq!(at.to_rfc3339(), "2030-05-01T12:00:00+00:00");
        assert!(parse_scheduled_at("2030-05-01T09:00:00Z").is_ok());
        assert!(parse_scheduled_at("2030-05-01 09:00:00Z").is_ok());
    }

    #[test]
    fn a_time_without_an_offset_is_told_to_add_one() {
        for text in [
            "2030-05-01T09:00:00",
            "2030-05-01 09:00:00",
            "2030-05-01T09:00",
        ] {
            let error = parse_scheduled_at(text).unwrap_err();
            assert!(error.contains("no UTC offset"), "{text}: {error}");
            assert!(error.contains("`2030-05-01T09:00:00Z`"), "{text}: {error}");
        }
        let error = parse_scheduled_at("2030-05-01").unwrap_err();
        assert!(error.contains("UTC offset"), "{error}");
        let error = parse_scheduled_at("tomorrow").unwrap_err();
        assert!(error.contains("RFC 3339"), "{error}");
    }
}
