//! `herald campaign retry ID --scope transient [--reason CODE]...`: re-open a
//! paused or completed campaign's failed recipients through
//! `POST /v1/campaigns/{id}/retry`.

use clap::{Args, ValueEnum};
use reqwest::Method;
use serde_json::json;

use super::campaign::TransitionArgs;
use super::{ApiClient, CliError, cell, pretty};

/// Which failed recipients to send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    /// Failures that may succeed later (`retries_exhausted`: timeouts, 5xx).
    Transient,
    /// Every failure; bounced recipients only with `--reason bounced`.
    Failed,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub transition: TransitionArgs,
    #[arg(long, value_enum)]
    pub scope: Scope,
    /// Only recipients that failed with this reason code (repeatable).
    #[arg(long = "reason")]
    pub reasons: Vec<String>,
}

/// The request body of a retry.
pub fn retry_body(args: &RetryArgs) -> serde_json::Value {
    let scope = match args.scope {
        Scope::Transient => "transient",
        Scope::Failed => "failed",
    };
    let mut body = json!({ "scope": scope });
    if !args.reasons.is_empty() {
        body["reasons"] = json!(args.reasons);
    }
    body
}

pub async fn retry(client: &ApiClient, args: RetryArgs, json: bool) -> Result<(), CliError> {
    let id = args.transition.id;
    let mut request = client
        .request(Method::POST, &format!("/v1/campaigns/{id}/retry"))
        .json(&retry_body(&args));
    if let Some(version) = args.transition.if_match {
        request = request.header(reqwest::header::IF_MATCH, version.to_string());
    }
    if let Some(correlation) = &args.transition.correlation_id {
        request = request.header("X-Correlation-Id", correlation);
    }
    let result = client.call(request).await?;
    if json {
        println!("{}", pretty(&result));
    } else {
        let campaign = &result["campaign"];
        println!(
            "{}: {} (version {}), {} recipients re-opened",
            cell(&campaign["id"]),
            cell(&campaign["status"]),
            cell(&campaign["version"]),
            cell(&result["reopened"])
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_scope_and_only_the_reasons_given() {
        let mut args = RetryArgs {
            transition: TransitionArgs {
                id: uuid::Uuid::nil(),
                if_match: None,
                correlation_id: None,
            },
            scope: Scope::Transient,
            reasons: vec![],
        };
        assert_eq!(retry_body(&args), json!({"scope": "transient"}));
        args.scope = Scope::Failed;
        args.reasons = vec!["bounced".into()];
        assert_eq!(
            retry_body(&args),
            json!({"scope": "failed", "reasons": ["bounced"]})
        );
    }
}
