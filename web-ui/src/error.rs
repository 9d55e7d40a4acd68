//! Errors: [`WebError`] for starting the server, [`AppError`] for one request.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why the web UI could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    // Configuration.
    #[error("cannot bind the web UI to {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("users file: {0}")]
    Users(#[from] crate::users::UserError),
    // The archive.
    #[error("reading the archive to rebuild review state: {0}")]
    Archive(#[from] custos_archive::ReadError),
    // Local I/O while serving.
    #[error("serving the web UI: {0}")]
    Serve(std::io::Error),
}

/// Everything a handler can fail with. The cause is logged; the reviewer sees
/// a plain message that leaks nothing of the internals.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    // The reviewer's doing.
    #[error("not signed in")]
    Unauthenticated,
    #[error("your role does not allow this")]
    Forbidden,
    #[error("the form expired or did not come from this site; reload the page and try again")]
    Csrf,
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("you may not review messages you sent or received")]
    SelfReview,
    #[error("you may not release or change a legal hold that names you as a custodian")]
    OwnHold,
    #[error("too many failed sign-ins; try again in {0} seconds")]
    Throttled(u64),
    // The archive's.
    #[error("the archive refused the write: {0}")]
    Append(#[from] custos_archive::AppendError),
    #[error("reading the archive: {0}")]
    Read(#[from] custos_archive::ReadError),
    #[error("search failed: {0}")]
    Search(custos_archive::SearchError),
    // Ours.
    #[error("the review state is not whole: it is being built from the archive; try again in a few minutes")]
    Rebuilding,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<custos_archive::SearchError> for AppError {
    fn from(e: custos_archive::SearchError) -> AppError {
        match e {
            // A query the reviewer mistyped is theirs to fix: show why.
            custos_archive::SearchError::Query(q) => AppError::BadRequest(q.to_string()),
            other => AppError::Search(other),
        }
    }
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthenticated => StatusCode::SEE_OTHER,
            AppError::Forbidden | AppError::Csrf | AppError::SelfReview | AppError::OwnHold => {
                StatusCode::FORBIDDEN
            }
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Rebuilding => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Append(_)
            | AppError::Read(_)
            | AppError::Search(_)
            | AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the reviewer is shown.
    fn public_message(&self) -> String {
        match self {
            AppError::Append(_) => "The archive could not record this action, so it was not carried out. Try again; if it persists, tell the operator.".into(),
            AppError::Read(_) | AppError::Search(_) | AppError::Internal(_) => "Something went wrong on the server. The details are in its log.".into(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(cause = %self, "request failed");
        } else {
            tracing::info!(cause = %self, status = status.as_u16(), "request refused");
        }
        if matches!(self, AppError::Unauthenticated) {
            // A person lands on the sign-in page; nothing was done.
            return (
                StatusCode::SEE_OTHER,
                [(axum::http::header::LOCATION, "/login")],
            )
                .into_response();
        }
        (
            status,
            crate::pages::error_page(status, &self.public_message()),
        )
            .into_response()
    }
}
