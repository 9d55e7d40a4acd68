//! Accounts.

use super::*;

pub async fn users(State(app): State<Arc<App>>, a: Authed) -> Result<Page, AppError> {
    let list =
        users::load_users(&app.cfg.users_file).map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(users_page(&a, &list, None))
}

fn users_page(a: &Authed, list: &[users::User], error: Option<&str>) -> Page {
    layout(
        "Accounts",
        Some(a),
        Nav::Users,
        pages::accounts::accounts(&a.session, list, error),
    )
}

#[derive(Deserialize)]
pub struct UserForm {
    csrf: String,
    name: String,
    role: String,
    password: String,
    #[serde(default)]
    jids: String,
}

pub async fn user_add(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(f): Form<UserForm>,
) -> Result<Response, AppError> {
    a.check_csrf(&f.csrf)?;
    let role: Role = f
        .role
        .parse()
        .map_err(|e: users::UserError| AppError::BadRequest(e.to_string()))?;
    let jids: Vec<String> = f
        .jids
        .split(',')
        .map(str::trim)
        .filter(|j| !j.is_empty())
        .map(String::from)
        .collect();
    app.audit(
        &a.session.user,
        audit_action::USER_ADD,
        json!({ "name": f.name, "role": role.as_str(), "jids": jids }),
    )
    .await?;
    let path = app.cfg.users_file.clone();
    let (name, password) = (f.name.clone(), f.password);
    let result =
        tokio::task::spawn_blocking(move || users::add_user(&path, &name, role, &password, &jids))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?;
    match result {
        Ok(()) => Ok(Redirect::to("/users").into_response()),
        Err(
            e @ (users::UserError::Exists(_)
            | users::UserError::BadName(_)
            | users::UserError::WeakPassword { .. }
            | users::UserError::BadJid(_)),
        ) => {
            let list = users::load_users(&app.cfg.users_file)
                .map_err(|e| AppError::Internal(e.to_string()))?;
            Ok((
                StatusCode::BAD_REQUEST,
                users_page(&a, &list, Some(&e.to_string())),
            )
                .into_response())
        }
        Err(e) => Err(AppError::Internal(e.to_string())),
    }
}

#[derive(Deserialize)]
pub struct RemoveForm {
    csrf: String,
    name: String,
}

pub async fn user_remove(
    State(app): State<Arc<App>>,
    a: Authed,
    Form(f): Form<RemoveForm>,
) -> Result<Response, AppError> {
    a.check_csrf(&f.csrf)?;
    if f.name == a.session.user {
        return Err(AppError::BadRequest(
            "you cannot remove your own account".into(),
        ));
    }
    app.audit(
        &a.session.user,
        audit_action::USER_REMOVE,
        json!({ "name": f.name }),
    )
    .await?;
    users::remove_user(&app.cfg.users_file, &f.name).map_err(|e| match e {
        users::UserError::NotFound(_) => AppError::NotFound,
        other => AppError::Internal(other.to_string()),
    })?;
    lock(&app.sessions).end_user(&f.name);
    Ok(Redirect::to("/users").into_response())
}
