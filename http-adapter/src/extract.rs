//! Extractors that answer with [`ApiError`] instead of axum's plain-text
//! rejections: the caller (auth and scope), the task id in the path, the
//! JSON body (content type, size, decoding with the failing field's path)
//! and query parameters.
//!
//! Handlers list the caller first, so a request is judged in this order:
//! 401 (who), 403 (may they), 404 (which task), 415 / 413 / 400 (the body).

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use tickwheel::TaskId;

use crate::ApiState;
use crate::auth::{AuthError, Principal, Scope, parse_header};
use crate::error::ApiError;

/// Largest request body accepted: 256 KiB.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

async fn principal(parts: &Parts, state: &ApiState, needed: Scope) -> Result<Principal, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("missing Authorization header; send `Authorization: UserKey <key>`")
    })?;
    let key = parse_header(value.as_bytes()).map_err(ApiError::unauthorized)?;
    let principal = match state.auth().authenticate(key).await {
        Ok(p) => p,
        Err(AuthError::UnknownKey) => return Err(ApiError::unauthorized("unknown API key")),
        Err(AuthError::Backend(e)) => return Err(ApiError::internal(&e)),
    };
    if !principal.scope.allows(needed) {
        return Err(ApiError::forbidden(
            "this API key is read-only; the request needs the write scope",
        ));
    }
    Ok(principal)
}

/// A caller whose key has at least the read scope.
#[derive(Debug)]
pub(crate) struct Reader(pub(crate) Principal);

impl FromRequestParts<ApiState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        principal(parts, state, Scope::Read).await.map(Reader)
    }
}

/// A caller whose key has the write scope.
#[derive(Debug)]
pub(crate) struct Writer(pub(crate) Principal);

impl FromRequestParts<ApiState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        principal(parts, state, Scope::Write).await.map(Writer)
    }
}

/// The `{task_id}` path segment. Anything that is not a task id is a 404,
/// like an unknown id.
#[derive(Debug)]
pub(crate) struct TaskPath(pub(crate) TaskId);

impl<S: Send + Sync> FromRequestParts<S> for TaskPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::task_not_found("?"))?;
        raw.parse::<TaskId>()
            .map(TaskPath)
            .map_err(|_| ApiError::task_not_found(&raw))
    }
}

/// The query string as name/value pairs, in order.
#[derive(Debug)]
pub(crate) struct QueryPairs(pub(crate) Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| QueryPairs(pairs))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("the query string cannot be read: {}", e.body_text()),
                )
            })
    }
}

impl QueryPairs {
    /// The last value given for `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name` as a number in `min..=max`, or `default` if absent.
    pub(crate) fn number(
        &self,
        name: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, ApiError> {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        match raw.trim().parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "query parameter {name}: {raw:?} is not a whole number from {min} to {max}"
                ),
            )
            .with("field", name)),
        }
    }
}

/// A JSON request body decoded into `T`.
///
/// - 415 unless `Content-Type` is `application/json` (parameters such as
///   `charset=utf-8` allowed) or another `+json` type;
/// - 413 over [`MAX_BODY_BYTES`], judged from `Content-Length` before
///   reading and enforced while reading;
/// - 400 `invalid_json` for bytes that are not JSON (the message gives the
///   line and column), 400 `invalid_field` for JSON of the wrong shape, with
///   the path of the field (`policy.max_retries`).
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        check_content_type(req.headers())?;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is over 256 KiB ({MAX_BODY_BYTES} bytes)"),
            )
            .with("limit", MAX_BODY_BYTES)
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await {
            Ok(bytes) => bytes,
            Err(e) => {
                let limit_hit =
                    source_chain(&e).any(|s| s.is::<http_body_util::LengthLimitError>());
                return Err(if limit_hit {
                    too_large()
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_body",
                        "the request body could not be read",
                    )
                });
            }
        };
        decode(&bytes).map(JsonBody)
    }
}

/// `e` and its sources, outermost first.
fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

fn check_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let unsupported = |got: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be application/json, got {got}"),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("none"));
    };
    let Ok(value) = value.to_str() else {
        return Err(unsupported("a value that is not ASCII"));
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(unsupported(&format!("{value:?}")))
    }
}

/// Decodes a JSON object body, naming the failing field.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        // Structs also deserialize from arrays; a body must be an object.
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            let kind = match value {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => "an object",
            };
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("request body: must be a JSON object, got {kind}"),
            ));
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| json_error(".", &e))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    // serde_json appends " at line L column C"; keep the message, put the
    // position in the details.
    let full = e.to_string();
    let message = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(m, _)| m)
        .to_owned();
    let located = |error: ApiError| error.with("line", e.line()).with("column", e.column());
    match e.classify() {
        Category::Data if path != "." && !path.is_empty() => {
            located(ApiError::invalid_field(path, message))
        }
        Category::Data => located(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("request body: {message}"),
        )),
        Category::Syntax | Category::Eof | Category::Io => located(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!(
                "the request body is not valid JSON: {message} at line {} column {}",
                e.line(),
                e.column()
            ),
        )),
    }
}
