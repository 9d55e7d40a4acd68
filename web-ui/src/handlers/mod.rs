//! Route handlers. The permission each route carries in [`crate::app::ROUTES`] is
//! checked before its handler runs; a handler checks (for POST) the CSRF token, then
//! writes its audit record before doing or showing anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use custos_archive::query::Lexicons;
use custos_archive::{EditKind, MessageHit, NewRecord, Record, Timestamp};
use serde::Deserialize;
use serde_json::json;

use crate::app::{lock, read, App, Authed, ClientAddr};
use crate::auth::{self, LOGIN_COOKIE, SESSION_COOKIE};
use crate::charts::Bar;
use crate::error::AppError;
use crate::highlight;
use crate::pages::{self, layout, Nav, Page};
use crate::roles::{allows, Perm};
use crate::store::{self, audit_action, MsgRef, ReviewChange, ReviewStatus};
use crate::users::{self, Role};

/// Rows per page of search results and the review queue.
const PAGE: usize = 25;

mod accounts;
mod audit;
mod conversation;
mod dashboard;
mod queue;
pub mod retention;
mod search;
mod signin;

pub use accounts::*;
pub use audit::*;
pub use conversation::*;
pub use dashboard::*;
pub use queue::*;
pub use search::*;
pub use signin::*;

const CSS: &str = include_str!("../../static/app.css");
const JS: &str = include_str!("../../static/app.js");

pub async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

pub async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}
