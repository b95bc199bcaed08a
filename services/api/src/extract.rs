//! Request extractors: the bearer token's tenant, the correlation id, `If-Match`,
//! and JSON bodies that fail with Herald's error shape.

use axum::extract::{FromRef, FromRequest, FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use herald_core::auth::Tenant;
use std::sync::LazyLock;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body; bad JSON is a 400, a body of the wrong shape a 422.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// The authenticated tenant (401 without a valid `Authorization: Bearer`).
#[derive(Debug, Clone)]
pub struct AuthTenant(pub Tenant);

impl<S> FromRequestParts<S> for AuthTenant
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        let tenant = herald_core::auth::authenticate(&state.pool, token)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        Ok(AuthTenant(tenant))
    }
}

impl AuthTenant {
    pub fn actor(&self, correlation: &RequestCorrelation) -> herald_core::transitions::Actor {
        herald_core::transitions::Actor {
            name: format!("tenant:{}", self.0.name),
            request_correlation_id: correlation.0.clone(),
        }
    }
}

static CORRELATION_PATTERN: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[A-Za-z0-9._:-]{1,128}$").expect("valid pattern"));

/// `X-Correlation-Id`, if the caller sent one. It travels as a NATS header, never
/// inside a payload, so a loose value like `abc-123` cannot break a contract.
#[derive(Debug, Clone, Default)]
pub struct RequestCorrelation(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RequestCorrelation {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get("x-correlation-id") {
            None => Ok(Self(None)),
            Some(value) => {
                let text = value.to_str().unwrap_or("");
                if CORRELATION_PATTERN.is_match(text) {
                    Ok(Self(Some(text.to_owned())))
                } else {
                    Err(ApiError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "invalid_correlation_id",
                        "X-Correlation-Id must match ^[A-Za-z0-9._:-]{1,128}$",
                    ))
                }
            }
        }
    }
}

/// `If-Match: <version>` (quotes allowed, as for an ETag).
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub i64);

impl<S: Send + Sync> OptionalFromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let Some(value) = parts.headers.get(axum::http::header::IF_MATCH) else {
            return Ok(None);
        };
        let text = value
            .to_str()
            .unwrap_or("")
            .trim()
            .trim_start_matches("W/")
            .trim_matches('"');
        text.parse::<i64>()
            .map(|v| Some(IfMatch(v)))
            .map_err(|_| ApiError::bad_request("If-Match must be a campaign version number"))
    }
}
