//! Signing in and out.

use super::*;

pub async fn login_form(State(app): State<Arc<App>>) -> Result<Response, AppError> {
    let token = auth::random_token().map_err(|e| AppError::Internal(e.to_string()))?;
    let cookie = auth::set_cookie(LOGIN_COOKIE, &token, app.cfg.secure_cookies, Some(3600));
    Ok(([(header::SET_COOKIE, cookie)], pages::login(&token, None)).into_response())
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    csrf: String,
}

pub async fn login(
    State(app): State<Arc<App>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, AppError> {
    // Double-submit: the form's token must equal the cookie set with the form,
    // which another site can neither read nor set (SameSite=Strict, HttpOnly).
    let expected = auth::cookie(&headers, LOGIN_COOKIE).ok_or(AppError::Csrf)?;
    if !auth::same_token(expected, &f.csrf) {
        return Err(AppError::Csrf);
    }
    // A name no account can have is kept out of the throttle's table and the archive
    // (an unauthenticated client chooses it, up to the size of a request): it fails as
    // a wrong password does, counted against the client's address.
    let valid = users::valid_name(&f.user);
    let mut keys = Vec::with_capacity(2);
    if valid {
        keys.push(format!("user:{}", f.user));
    }
    keys.extend(addr.map(|a| format!("ip:{}", auth::client_key(a.ip()))));
    if let Some(wait) = lock(&app.throttle).locked(&keys, Instant::now()) {
        return Err(AppError::Throttled(wait.as_secs().max(1)));
    }
    // Re-read so accounts added by `custos user add` while serving work at once.
    let path = app.cfg.users_file.clone();
    let (name, password) = (f.user.clone(), f.password);
    let found = tokio::task::spawn_blocking(move || {
        let all = users::load_users(&path)?;
        let user = all.into_iter().find(|u| valid && u.name == name);
        let ok = users::verify_password(user.as_ref(), &password);
        Ok::<_, users::UserError>(user.filter(|_| ok))
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?
    .map_err(|e| AppError::Internal(e.to_string()))?;
    let Some(user) = found else {
        lock(&app.throttle).fail(&keys, Instant::now());
        let (actor, detail) = if valid {
            (
                f.user.as_str(),
                json!({ "client": addr.map(|a| a.ip().to_string()) }),
            )
        } else {
            (
                "(not an account name)",
                json!({ "client": addr.map(|a| a.ip().to_string()), "name_bytes": f.user.len() }),
            )
        };
        app.audit(actor, audit_action::SIGN_IN_FAILED, detail)
            .await?;
        return Ok((
            StatusCode::UNAUTHORIZED,
            pages::login(&f.csrf, Some("Unknown account or wrong password.")),
        )
            .into_response());
    };
    lock(&app.throttle).succeed(&keys);
    app.audit(
        &user.name,
        audit_action::SIGN_IN,
        json!({ "role": user.role.as_str(), "client": addr.map(|a| a.ip().to_string()) }),
    )
    .await?;
    let id = lock(&app.sessions)
        .create(&user.name, user.role, user.jids)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let session = auth::set_cookie(SESSION_COOKIE, &id, app.cfg.secure_cookies, None);
    let clear = auth::set_cookie(LOGIN_COOKIE, "", app.cfg.secure_cookies, Some(0));
    let mut res = Redirect::to("/").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        session
            .parse()
            .map_err(|_| AppError::Internal("cookie".into()))?,
    );
    res.headers_mut().append(
        header::SET_COOKIE,
        clear
            .parse()
            .map_err(|_| AppError::Internal("cookie".into()))?,
    );
    Ok(res)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(f): Form<CsrfForm>,
) -> Result<Response, AppError> {
    a.check_csrf(&f.csrf)?;
    app.audit(&a.session.user, audit_action::SIGN_OUT, json!({}))
        .await?;
    lock(&app.sessions).end(&a.id);
    let clear = auth::set_cookie(SESSION_COOKIE, "", app.cfg.secure_cookies, Some(0));
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response())
}
