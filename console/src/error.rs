//! What stops a console request, and how it is answered: JSON `{"error": …}` under `/api/`,
//! a page elsewhere (and the sign-in page for a visitor who is not signed in). 5xx causes are
//! logged in full and answered in one line; none carries a secret.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::time::Duration;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("sign in first")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("too many failed sign-ins; try again in {}s", .0.as_secs().max(1))]
    TooMany(Duration),
    #[error("{0}")]
    Unavailable(String),
}

impl ConsoleError {
    pub fn status(&self) -> StatusCode {
        match self {
            ConsoleError::Unauthorized => StatusCode::UNAUTHORIZED,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            ConsoleError::TooMany(d) => HeaderValue::from_str(&d.as_secs().max(1).to_string()).ok(),
            _ => None,
        }
    }
}

impl From<deadletters::DlqError> for ConsoleError {
    fn from(e: deadletters::DlqError) -> Self {
        use deadletters::DlqError as D;
        match e {
            D::UnknownIds(_) | D::UnknownReplay(_) | D::NothingMatched(_) => {
                ConsoleError::NotFound(e.to_string())
            }
            D::Usage(_) | D::Refused(_) => ConsoleError::BadRequest(e.to_string()),
            other => {
                tracing::error!(error = %other, "the console could not reach the store");
                ConsoleError::Unavailable(other.to_string())
            }
        }
    }
}

/// An error answered as JSON (the API).
#[derive(Debug)]
pub struct ApiError(pub ConsoleError);

impl<E: Into<ConsoleError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.0.status(),
            axum::Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response();
        if let Some(v) = self.0.retry_after() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// An error answered as a page.
#[derive(Debug)]
pub struct PageError(pub ConsoleError);

impl<E: Into<ConsoleError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if matches!(self.0, ConsoleError::Unauthorized) {
            return Redirect::to("/login").into_response();
        }
        let status = self.0.status();
        let mut r = (status, crate::html::error_page(status, &self.0.to_string())).into_response();
        if let Some(v) = self.0.retry_after() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}
