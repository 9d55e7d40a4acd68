//! Web UI accounts: the users file (JSON, written atomically, mode 0600),
//! roles, argon2id password hashes and the JIDs an account is linked to.
//!
//! The file lives outside the archive directory: it holds credentials, not
//! evidence. The server re-reads it on every sign-in, so accounts added with
//! `custos user add` while the server runs can sign in at once.

use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

/// Format version of the users file.
const USERS_VERSION: u32 = 1;

/// What an account may do (see [`crate::roles`] for the full matrix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages accounts, reads everything, sees the audit trail.
    Admin,
    /// Searches, reads and reviews.
    Officer,
    /// Searches and reads, sees the audit trail; changes nothing.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Officer, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Officer => "officer",
            Role::Auditor => "auditor",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = UserError;
    fn from_str(s: &str) -> Result<Role, UserError> {
        match s {
            "admin" => Ok(Role::Admin),
            "officer" => Ok(Role::Officer),
            "auditor" => Ok(Role::Auditor),
            other => Err(UserError::BadRole(other.to_string())),
        }
    }
}

/// One account as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// PHC string (`$argon2id$…`).
    pub password_hash: String,
    /// Bare JIDs of the XMPP accounts this person uses: they may not review
    /// messages sent or received by these.
    #[serde(default)]
    pub jids: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct UsersFile {
    version: u32,
    users: Vec<User>,
}

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    // The caller's input.
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?}")]
    NotFound(String),
    #[error("bad user name {0:?}: use 1-64 letters, digits, '.', '-', '_' or '@'")]
    BadName(String),
    #[error("unknown role {0:?} (roles: admin, officer, auditor)")]
    BadRole(String),
    #[error("password must be at least {min} characters")]
    WeakPassword { min: usize },
    #[error("bad JID {0:?}")]
    BadJid(String),
    // The file on disk.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid users file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    // The platform.
    #[error("hashing the password failed: {0}")]
    Hash(String),
}

/// Shortest password accepted for a new account.
pub const MIN_PASSWORD_LEN: usize = 10;

/// Reads all accounts; a missing file means no accounts yet.
pub fn load_users(path: &Path) -> Result<Vec<User>, UserError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(UserError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: UsersFile = serde_json::from_str(&text).map_err(|e| UserError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if file.version != USERS_VERSION {
        return Err(UserError::Format {
            path: path.to_path_buf(),
            reason: format!("unsupported version {}", file.version),
        });
    }
    Ok(file.users)
}

/// Whether `name` is one an account can have: 1 to 64 characters of letters, digits and
/// `.-_@`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
}

/// Normalises a JID for linking: bare, lowercase. Refuses anything that is not `local@domain`-shaped.
fn normalize_link(jid: &str) -> Result<String, UserError> {
    let bare = custos_archive::query::normalize_jid(custos_archive::query::bare_jid(jid));
    let ok = !bare.is_empty()
        && !bare.contains(char::is_whitespace)
        && !bare.starts_with('@')
        && !bare.ends_with('@');
    if ok {
        Ok(bare)
    } else {
        Err(UserError::BadJid(jid.to_string()))
    }
}

/// Adds an account. Refuses duplicates; the file is replaced atomically
/// (temp file, fsync, rename) and is readable by its owner only.
pub fn add_user(
    users_file: &Path,
    name: &str,
    role: Role,
    password: &str,
    jids: &[String],
) -> Result<(), UserError> {
    if !valid_name(name) {
        return Err(UserError::BadName(name.to_string()));
    }
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(UserError::WeakPassword {
            min: MIN_PASSWORD_LEN,
        });
    }
    let jids = jids
        .iter()
        .map(|j| normalize_link(j))
        .collect::<Result<Vec<_>, _>>()?;
    let mut users = load_users(users_file)?;
    if users.iter().any(|u| u.name == name) {
        return Err(UserError::Exists(name.to_string()));
    }
    users.push(User {
        name: name.to_string(),
        role,
        password_hash: hash_password(password)?,
        jids,
    });
    write_users(users_file, users)
}

/// Removes an account.
pub fn remove_user(users_file: &Path, name: &str) -> Result<(), UserError> {
    let mut users = load_users(users_file)?;
    let before = users.len();
    users.retain(|u| u.name != name);
    if users.len() == before {
        return Err(UserError::NotFound(name.to_string()));
    }
    write_users(users_file, users)
}

fn write_users(path: &Path, users: Vec<User>) -> Result<(), UserError> {
    let werr = |source| UserError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_string_pretty(&UsersFile {
        version: USERS_VERSION,
        users,
    })
    .map_err(|e| UserError::Hash(e.to_string()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "users.json".into());
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(werr)?;
    // A temp file left by an earlier crash may carry a wider mode: fix it before writing secrets.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(werr)?;
    }
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(werr)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(werr)?;
    // The rename is durable only once the directory entry is.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn hash_password(password: &str) -> Result<String, UserError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| UserError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// A valid argon2id hash of a random string: unknown user names are checked
/// against it so a failed sign-in takes as long whether or not the name exists.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3V3cEUhBXjQk3P2rJu7cU5mUqk2Qd9G4o1F9j6yG3bM";

/// Checks a password against a stored PHC hash (or the dummy hash when the
/// account does not exist). Slow by design: call off the async executor.
pub fn verify_password(user: Option<&User>, password: &str) -> bool {
    let stored = user.map_or(DUMMY_HASH, |u| u.password_hash.as_str());
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && user.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_refuse_duplicate_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        add_user(
            &path,
            "olivia",
            Role::Officer,
            "correct horse battery",
            &["Olivia@Example.test/phone".into()],
        )
        .unwrap();
        let users = load_users(&path).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].jids, vec!["olivia@example.test".to_string()]);
        assert!(users[0].password_hash.starts_with("$argon2id$"));
        assert!(verify_password(users.first(), "correct horse battery"));
        assert!(!verify_password(users.first(), "correct horse batterx"));
        assert!(!verify_password(None, "correct horse battery"));
        assert!(matches!(
            add_user(&path, "olivia", Role::Admin, "another password", &[]),
            Err(UserError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        remove_user(&path, "olivia").unwrap();
        assert!(load_users(&path).unwrap().is_empty());
        assert!(matches!(
            remove_user(&path, "olivia"),
            Err(UserError::NotFound(_))
        ));
    }

    #[test]
    fn refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        assert!(matches!(
            add_user(&path, "a b", Role::Admin, "long enough pw", &[]),
            Err(UserError::BadName(_))
        ));
        assert!(matches!(
            add_user(&path, "ok", Role::Admin, "short", &[]),
            Err(UserError::WeakPassword { .. })
        ));
        assert!(matches!(
            add_user(
                &path,
                "ok",
                Role::Admin,
                "long enough pw",
                &["has space@x".into()]
            ),
            Err(UserError::BadJid(_))
        ));
        assert!(!path.exists(), "nothing written on refusal");
        std::fs::write(&path, "{\"version\":9,\"users\":[]}").unwrap();
        assert!(matches!(load_users(&path), Err(UserError::Format { .. })));
        assert!("root".parse::<Role>().is_err());
        assert_eq!("auditor".parse::<Role>().unwrap(), Role::Auditor);
    }

    #[test]
    fn dummy_hash_parses() {
        // If it did not parse, unknown names would return early and leak existence by timing.
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
