//! Errors as HTTP answers: every one is `{"error": "<stable code>", "message": "..."}` with
//! the status that fits, converted here and nowhere else.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::ingest::Rejection;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 503 and 429.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn storage_unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                message,
            )
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let status = match rejection {
            Rejection::UnsupportedEncoding(_)
            | Rejection::MissingContentType
            | Rejection::UnsupportedContentType(_)
            | Rejection::UnsupportedCharset(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::MissingSecret(_) | Rejection::InvalidSecret => StatusCode::UNAUTHORIZED,
            Rejection::SenderNotAllowed(_) | Rejection::ClientCertificateRequired(..) => {
                StatusCode::FORBIDDEN
            }
            Rejection::EmptyBody
            | Rejection::InvalidUtf8
            | Rejection::NulByte
            | Rejection::MalformedJson(_)
            | Rejection::DuplicateKey(_)
            | Rejection::TooDeep
            | Rejection::NulInKey
            | Rejection::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, rejection.code(), rejection.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            message: &self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed here",
    )
}
