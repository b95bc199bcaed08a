//! A CSV header line as people write it: which column holds the address, and the
//! variable name each other column becomes.
//!
//! Names are matched ignoring case and surrounding spaces. The address column is
//! `address`, or else the one column called `phone`, `email`, `number` or `to`.
//! Another column becomes a variable under its own (trimmed) name, or under the
//! template's spelling when the template uses that name in another case: a
//! `Name` column fills `{{ name }}`.

use crate::error::ApiError;

/// What the address column may be called besides `address` (compared in lower case).
pub const ADDRESS_ALIASES: [&str; 4] = ["phone", "email", "number", "to"];

/// Header names listed in an error, at most; and their length, at most.
const LISTED_HEADERS: usize = 50;
const LISTED_HEADER_CHARS: usize = 64;

/// How the columns of a CSV map to a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// Index of the address column.
    pub address: usize,
    /// The variable name of every column (the address column's is unused).
    pub names: Vec<String>,
}

fn key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Maps `headers` (trimmed, byte order mark removed) to [`Columns`]. 422 when
/// no column, or more than one, can be the address; the message lists the
/// headers found and hints at the delimiter when the header line holds `;` or a
/// tab.
pub fn resolve(headers: &[String], template_variables: &[String]) -> Result<Columns, ApiError> {
    let keys: Vec<String> = headers.iter().map(|h| key(h)).collect();
    let named = |wanted: &dyn Fn(&str) -> bool| -> Vec<usize> {
        (0..keys.len()).filter(|&i| wanted(&keys[i])).collect()
    };
    let mut candidates = named(&|k| k == "address");
    if candidates.is_empty() {
        candidates = named(&|k| ADDRESS_ALIASES.contains(&k));
    }
    let address = match candidates.as_slice() {
        [one] => *one,
        [] => return Err(no_address_column(headers)),
        several => return Err(several_address_columns(headers, several)),
    };
    let names = headers
        .iter()
        .zip(&keys)
        .map(|(header, key)| {
            template_variables
                .iter()
                .find(|v| v.to_lowercase() == *key)
                .cloned()
                .unwrap_or_else(|| header.trim().to_owned())
        })
        .collect();
    Ok(Columns { address, names })
}

fn listed(headers: &[String]) -> Vec<String> {
    headers
        .iter()
        .take(LISTED_HEADERS)
        .map(|h| h.chars().take(LISTED_HEADER_CHARS).collect())
        .collect()
}

fn quoted(headers: &[String]) -> String {
    if headers.iter().all(String::is_empty) {
        return "none".into();
    }
    headers
        .iter()
        .map(|h| format!("`{h}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A hint when the header line looks separated by something other than commas.
fn delimiter_hint(headers: &[String]) -> Option<&'static str> {
    if headers.iter().any(|h| h.contains(';')) {
        Some(
            " The header holds `;`: the file looks semicolon-separated (as a spreadsheet \
             saves CSV in some locales); Herald reads comma-separated files, so save it \
             with commas as the delimiter.",
        )
    } else if headers.iter().any(|h| h.contains('\t')) {
        Some(
            " The header holds a tab: the file looks tab-separated; Herald reads \
             comma-separated files, so save it with commas as the delimiter.",
        )
    } else {
        None
    }
}

fn no_address_column(headers: &[String]) -> ApiError {
    let found = listed(headers);
    let mut message = format!(
        "the CSV has no address column: call it `address` (or `phone`, `email`, `number` \
         or `to`; case and surrounding spaces do not matter). Headers found: {}.",
        quoted(&found)
    );
    if let Some(hint) = delimiter_hint(headers) {
        message.push_str(hint);
    }
    ApiError::validation(message)
}

fn several_address_columns(headers: &[String], columns: &[usize]) -> ApiError {
    let clashing: Vec<String> = columns.iter().map(|&i| headers[i].clone()).collect();
    ApiError::validation(format!(
        "the CSV has several columns that could be the address ({}): rename the one to \
         send to `address`",
        quoted(&listed(&clashing))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(line: &str) -> Vec<String> {
        line.split(',').map(|h| h.trim().to_owned()).collect()
    }

    #[test]
    fn the_address_column_is_found_ignoring_case_spaces_and_by_its_aliases() {
        for (line, address) in [
            ("Address,Name", 0),
            ("name, ADDRESS ", 1),
            ("Name,Phone", 1),
            ("email,name", 0),
            ("Number", 0),
            ("name,To", 1),
            ("phone,address", 1),
        ] {
            let columns = resolve(&headers(line), &[]).unwrap();
            assert_eq!(columns.address, address, "{line}");
        }
    }

    #[test]
    fn other_columns_take_the_template_spelling_of_their_name() {
        let vars = ["name".to_owned(), "firstName".to_owned()];
        let columns = resolve(&headers("Address,Name,FIRSTNAME,City"), &vars).unwrap();
        assert_eq!(columns.names[1..], ["name", "firstName", "City"]);
    }

    #[test]
    fn a_missing_address_column_lists_the_headers_and_hints_at_the_delimiter() {
        let error = resolve(&headers("name,city"), &[]).unwrap_err();
        assert_eq!(error.status, 422);
        assert!(
            error.detail.message.contains("`name`, `city`"),
            "{}",
            error.detail.message
        );
        assert!(!error.detail.message.contains("delimiter"));

        let error = resolve(&["address;name".to_owned()], &[]).unwrap_err();
        assert!(
            error.detail.message.contains("`address;name`"),
            "{}",
            error.detail.message
        );
        assert!(
            error.detail.message.contains("semicolon"),
            "{}",
            error.detail.message
        );
        let error = resolve(&["address\tname".to_owned()], &[]).unwrap_err();
        assert!(
            error.detail.message.contains("tab-separated"),
            "{}",
            error.detail.message
        );
    }

    #[test]
    fn several_alias_columns_are_ambiguous() {
        let error = resolve(&headers("email,phone,name"), &[]).unwrap_err();
        assert!(
            error.detail.message.contains("`email`, `phone`"),
            "{}",
            error.detail.message
        );
        let error = resolve(&headers("address,Address"), &[]).unwrap_err();
        assert!(
            error.detail.message.contains("several"),
            "{}",
            error.detail.message
        );
    }
}
