//! Shared application state, the router (one [`Perm`] per route) and the
//! request plumbing: the signed-in extractor, CSRF checks, security headers,
//! audit writes and following the archive's tail.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use custos_archive::archive::TailCursor;
use custos_archive::{Archive, ChainEntry, EventRecord, NewRecord, ReadError};

use crate::auth::{cookie, Session, Sessions, Throttle, SESSION_COOKIE};
use crate::error::AppError;
use crate::roles::{allows, Perm};
use crate::store::Store;
use crate::WebConfig;

/// Everything a handler can reach.
pub struct App {
    pub cfg: WebConfig,
    pub archive: Archive,
    pub store: RwLock<Store>,
    /// Where following the archive left off. The lock also serialises catch-ups,
    /// so two never apply the same records concurrently.
    tail: Mutex<TailCursor>,
    pub sessions: Mutex<Sessions>,
    pub throttle: Mutex<Throttle>,
}

/// Locks a mutex; a panic elsewhere while holding it leaves plain data that is still usable.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

pub fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl App {
    /// Builds the state, scanning the whole archive once (blocking).
    pub fn new(cfg: WebConfig, archive: Archive) -> Result<App, ReadError> {
        let store = Store::new(archive.reader().archive_id(), cfg.sample_rate);
        let app = App {
            sessions: Mutex::new(Sessions::new(cfg.session_ttl)),
            throttle: Mutex::new(Throttle::new()),
            store: RwLock::new(store),
            tail: Mutex::new(TailCursor::new()),
            cfg,
            archive,
        };
        app.catch_up_blocking()?;
        Ok(app)
    }

    /// Applies every record appended since the last catch-up, reading only
    /// the bytes appended since. Blocking file I/O.
    pub fn catch_up_blocking(&self) -> Result<(), ReadError> {
        let mut cursor = lock(&self.tail);
        let mut entries: Vec<ChainEntry> = Vec::new();
        let followed = self.archive.reader().tail(&mut cursor, |e| {
            entries.push(e);
            Ok::<(), ReadError>(())
        });
        // The cursor has moved past whatever was handed over before an error;
        // those records would not be offered again, so apply them either way.
        if !entries.is_empty() {
            write(&self.store).apply(entries);
        }
        followed
    }

    /// [`App::catch_up_blocking`] off the async executor.
    pub async fn catch_up(self: &Arc<App>) -> Result<(), AppError> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.catch_up_blocking())
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??;
        Ok(())
    }

    /// Appends an audit record and waits until it is durable. An action whose
    /// audit record cannot be written is not carried out (callers write the
    /// record first).
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), AppError> {
        let rec = NewRecord::Event(EventRecord::Audit {
            actor: actor.to_string(),
            action: action.to_string(),
            detail: detail.to_string(),
        });
        self.archive.append(rec).await?;
        Ok(())
    }
}

/// A signed-in request: the session and its id.
pub struct Authed {
    pub id: String,
    pub session: Session,
}

impl Authed {
    pub fn require(&self, perm: Perm) -> Result<(), AppError> {
        if allows(self.session.role, perm) {
            Ok(())
        } else {
            Err(AppError::Forbidden)
        }
    }

    /// Checks the synchronizer token a form echoed.
    pub fn check_csrf(&self, token: &str) -> Result<(), AppError> {
        if crate::auth::same_token(&self.session.csrf, token) {
            Ok(())
        } else {
            Err(AppError::Csrf)
        }
    }
}

impl FromRequestParts<Arc<App>> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Authed, AppError> {
        let id = cookie(&parts.headers, SESSION_COOKIE).ok_or(AppError::Unauthenticated)?;
        let session = lock(&app.sessions)
            .touch(id)
            .ok_or(AppError::Unauthenticated)?;
        Ok(Authed {
            id: id.to_string(),
            session,
        })
    }
}

/// The client address when the server was started with connect info (tests
/// calling the router directly have none).
pub struct ClientAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientAddr, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// No inline script or style, nothing from elsewhere, no framing: a body that
/// slips past escaping still cannot run script.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

/// Every route, its method and the permission it needs; the router and the
/// role tests are both built from this table.
pub const ROUTES: &[(&str, &str, Option<Perm>)] = &[
    ("GET", "/login", None),
    ("POST", "/login", None),
    ("POST", "/logout", Some(Perm::Read)),
    ("GET", "/", Some(Perm::Read)),
    ("GET", "/search", Some(Perm::Read)),
    ("GET", "/export", Some(Perm::Read)),
    ("GET", "/export/regulator", Some(Perm::Read)),
    ("GET", "/conversation/{seq}", Some(Perm::Read)),
    ("GET", "/queue", Some(Perm::Read)),
    ("POST", "/queue", Some(Perm::Review)),
    ("GET", "/audit", Some(Perm::Audit)),
    ("GET", "/users", Some(Perm::ManageUsers)),
    ("POST", "/users", Some(Perm::ManageUsers)),
    ("POST", "/users/remove", Some(Perm::ManageUsers)),
    ("GET", "/holds", Some(Perm::Read)),
    ("POST", "/holds", Some(Perm::Hold)),
    ("POST", "/holds/release", Some(Perm::Hold)),
    ("GET", "/erasure", Some(Perm::Erasure)),
    ("POST", "/erasure", Some(Perm::Erasure)),
    ("GET", "/static/app.css", None),
    ("GET", "/static/app.js", None),
];

pub fn router(app: Arc<App>) -> Router {
    use crate::handlers as h;
    use crate::retention_pages as rp;
    Router::new()
        .route("/login", get(h::login_form).post(h::login))
        .route("/logout", post(h::logout))
        .route("/", get(h::dashboard))
        .route("/search", get(h::search))
        .route("/export", get(h::export))
        .route("/export/regulator", get(h::regulator_export))
        .route("/conversation/{seq}", get(h::conversation))
        .route("/queue", get(h::queue).post(h::queue_action))
        .route("/audit", get(h::audit))
        .route("/users", get(h::users).post(h::user_add))
        .route("/users/remove", post(h::user_remove))
        .route("/holds", get(rp::holds).post(rp::hold_add))
        .route("/holds/release", post(rp::hold_release))
        .route("/erasure", get(rp::erasure_form).post(rp::erasure))
        .route("/static/app.css", get(h::css))
        .route("/static/app.js", get(h::js))
        .fallback(|| async { AppError::NotFound.into_response() })
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(app)
}
