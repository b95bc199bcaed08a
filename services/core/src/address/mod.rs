//! Recipient addresses: which kind an address is, and the normalised form Herald
//! sends to and dedupes on.
//!
//! - **Phone numbers** become E.164 (`+5511987654321`), parsed and validated with
//!   the `phonenumber` crate (Google's libphonenumber metadata). A number written
//!   without a leading `+` needs the channel's `default_region` (ISO 3166-1
//!   alpha-2, e.g. `BR`).
//! - **E-mail addresses** keep their local part as typed and get their domain
//!   lower-cased (`Ana@example.com`); the ledger compares whole e-mail addresses
//!   case-insensitively, so `ana@example.com` and `Ana@Example.COM` are one
//!   recipient.
//! - **Opaque addresses** (a webhook's user id, anything else) are only trimmed.
//!
//! A channel may pin the kind (`address_kind` in its config, see [`Addressing`]);
//! an address that is not of the pinned kind is invalid. Without a pin, each
//! address is detected: an e-mail if it parses as one; a phone number if it is
//! written in E.164 already (`+` and 7 to 15 digits, kept as it is), parses as
//! a valid number (with a `+`, or in the default region when one is set and the
//! text has only phone characters), or is `+` and 7 to 15 digits once the
//! separators people write (spaces, `-`, `.`, `(`, `)`, `/`) are removed; else
//! opaque.

use phonenumber::country;
use serde::{Deserialize, Serialize};

/// Longest address accepted, in bytes (an e-mail address's limit, RFC 3696).
pub const MAX_ADDRESS_LEN: usize = 320;

/// What an address is. Stored in `recipients.address_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    /// A phone number, normalised to E.164.
    Phone,
    /// An e-mail address, domain lower-cased.
    Email,
    /// Anything else, only trimmed.
    Opaque,
}

impl AddressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Phone => "phone",
            AddressKind::Email => "email",
            AddressKind::Opaque => "opaque",
        }
    }
}

/// The config keys [`Addressing`] reads from a channel config.
pub const ADDRESSING_KEYS: [&str; 2] = ["address_kind", "default_region"];

/// How a channel reads recipient addresses: the `address_kind` and
/// `default_region` keys of its config, both optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Addressing {
    /// Pins every address of the channel to one kind; an address of another kind
    /// is rejected at import (`invalid_address`). Absent: detected per address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_kind: Option<AddressKind>,
    /// ISO 3166-1 alpha-2 region (`BR`, `US`, ...) for phone numbers written
    /// without a leading `+`. Not allowed with `address_kind` `email` or `opaque`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z]{2}$")]
    pub default_region: Option<String>,
}

impl Addressing {
    /// The addressing keys of a stored channel config. Lenient: a config written
    /// before these keys existed, or with an unreadable value, reads as "detect,
    /// no default region" (the API validates configs before storing them).
    pub fn from_config(config: &serde_json::Value) -> Self {
        let field = |key: &str| config.get(key).cloned().unwrap_or_default();
        Self {
            address_kind: serde_json::from_value(field("address_kind")).ok().flatten(),
            default_region: field("default_region").as_str().map(str::to_owned),
        }
    }

    /// Checks what serde cannot: the region is a known one and makes sense with
    /// the pinned kind. The message names the field as `channel.<key>`.
    pub fn validate(&self) -> Result<(), String> {
        self.normaliser().map(drop)
    }

    /// The normaliser for this channel, or why the settings are invalid.
    pub fn normaliser(&self) -> Result<Normaliser, String> {
        let region = match &self.default_region {
            None => None,
            Some(code) => Some(parse_region(code)?),
        };
        if region.is_some()
            && matches!(
                self.address_kind,
                Some(AddressKind::Email | AddressKind::Opaque)
            )
        {
            return Err(
                "channel.default_region applies to phone numbers; remove it or set \
                 address_kind to phone"
                    .into(),
            );
        }
        Ok(Normaliser {
            kind: self.address_kind,
            region,
        })
    }
}

fn parse_region(code: &str) -> Result<country::Id, String> {
    let invalid = || {
        format!(
            "channel.default_region must be an ISO 3166-1 alpha-2 region code with \
             phone numbering, such as BR or US; `{code}` is not one"
        )
    };
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(invalid());
    }
    code.to_ascii_uppercase().parse().map_err(|_| invalid())
}

/// An address in its normalised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalised {
    /// What is sent to and deduped on.
    pub address: String,
    pub kind: AddressKind,
}

/// Why an address was refused; every one is reason `invalid_address`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than {MAX_ADDRESS_LEN} bytes")]
    TooLong,
    #[error("address contains control characters")]
    ControlCharacters,
    /// Not a valid phone number of a channel pinned to phone numbers.
    #[error("{0}")]
    NotAPhoneNumber(String),
    /// Not an e-mail address on a channel pinned to e-mail.
    #[error("`{0}` is not an e-mail address")]
    NotAnEmail(String),
}

/// Normalises addresses the way one channel wants them (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Normaliser {
    kind: Option<AddressKind>,
    region: Option<country::Id>,
}

impl Normaliser {
    /// The normalised form of `input` (as typed), or why it is not an address.
    pub fn normalise(&self, input: &str) -> Result<Normalised, AddressError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        if text.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(AddressError::ControlCharacters);
        }
        match self.kind {
            Some(AddressKind::Phone) => self.phone(text).map_err(AddressError::NotAPhoneNumber),
            Some(AddressKind::Email) => {
                email(text).ok_or_else(|| AddressError::NotAnEmail(text.to_owned()))
            }
            Some(AddressKind::Opaque) => Ok(opaque(text)),
            None => Ok(self.detect(text)),
        }
    }

    fn detect(&self, text: &str) -> Normalised {
        if text.contains('@') {
            if let Some(found) = email(text) {
                return found;
            }
        }
        // Already E.164: that is its normalised form. Parsing it would give the
        // same text back at a cost of 10-25 µs a number (release build), which
        // a million-row import of E.164 numbers would pay for nothing.
        if is_e164(text) {
            return Normalised {
                address: text.to_owned(),
                kind: AddressKind::Phone,
            };
        }
        // Only text that could be a number goes to the phone parser: it is the
        // expensive step, and libphonenumber reads letters as keypad digits
        // (`1-800-FLOWERS`), which would turn an opaque id into a "number".
        let plus = text.starts_with('+');
        if (plus || self.region.is_some()) && looks_like_phone(text) {
            if let Ok(found) = self.phone(text) {
                return found;
            }
            // Not a number of any plan, but written as an international one
            // (`+1 555 0001`): its digits, so that it dedupes with `+15550001`
            // and matches a suppression list entry, which is kept that way.
            let digits: String = text
                .chars()
                .filter(|c| *c == '+' || c.is_ascii_digit())
                .collect();
            if plus && is_e164(&digits) {
                return Normalised {
                    address: digits,
                    kind: AddressKind::Phone,
                };
            }
        }
        opaque(text)
    }

    fn phone(&self, text: &str) -> Result<Normalised, String> {
        if !looks_like_phone(text) {
            return Err(format!("`{text}` is not a phone number"));
        }
        let region = if text.starts_with('+') {
            None
        } else {
            Some(self.region.ok_or_else(|| {
                format!(
                    "`{text}` has no country code: write it with a leading + (E.164), \
                     or set default_region in the channel config"
                )
            })?)
        };
        let number = phonenumber::parse(region, text)
            .map_err(|e| format!("`{text}` is not a phone number: {e}"))?;
        if !phonenumber::is_valid(&number) {
            return Err(format!(
                "`{text}` is not a valid phone number (no such number range in its country)"
            ));
        }
        Ok(Normalised {
            address: number.format().mode(phonenumber::Mode::E164).to_string(),
            kind: AddressKind::Phone,
        })
    }
}

/// E.164 as written: `+`, a first digit 1-9, then digits, 7 to 15 in all. (A
/// number shorter than 7 digits exists in no numbering plan.)
fn is_e164(text: &str) -> bool {
    let Some(digits) = text.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Digits and the punctuation people put in phone numbers, at least one digit.
fn looks_like_phone(text: &str) -> bool {
    let body = text.strip_prefix('+').unwrap_or(text);
    body.bytes().any(|b| b.is_ascii_digit())
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'/'))
}

/// An e-mail address without a display name or an IP literal, with a dotted
/// domain; its domain lower-cased.
fn email(text: &str) -> Option<Normalised> {
    let options = email_address::Options::default()
        .with_required_tld()
        .without_display_text()
        .without_domain_literal();
    let parsed = email_address::EmailAddress::parse_with_options(text, options).ok()?;
    Some(Normalised {
        address: format!("{}@{}", parsed.local_part(), parsed.domain().to_lowercase()),
        kind: AddressKind::Email,
    })
}

fn opaque(text: &str) -> Normalised {
    Normalised {
        address: text.to_owned(),
        kind: AddressKind::Opaque,
    }
}

#[cfg(test)]
mod tests;
