//! Key material: the master key, the Ed25519 signing key, keys derived from
//! the master key, and wrapping of per-segment data keys.
//!
//! ```text
//!  master key (32 B, outside the archive dir)
//!     ├─ HKDF "custos-kek-v1"        → wraps each segment's random data key
//!     ├─ HKDF "custos-blind-index-v1" → HMAC key for the blind search index
//!     └─ HKDF "custos-key-check-v1"  → check value in archive.meta (wrong key = clear error)
//! ```
//!
//! Key bytes are never formatted: `Debug` prints `MasterKey(..)`, errors name
//! paths and reasons only.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Environment variable holding a base64 master key.
pub const MASTER_KEY_ENV: &str = "CUSTOS_MASTER_KEY";

/// The archive master key. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    /// Where it was loaded from, so `Archive::open` can refuse a key kept
    /// inside the archive directory.
    origin: Option<PathBuf>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Loading or creating keys failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not base64 of 32 bytes")]
    Malformed { path: PathBuf },
    #[error("environment variable {MASTER_KEY_ENV} is not set")]
    EnvMissing,
    #[error("environment variable {MASTER_KEY_ENV} is not base64 of 32 bytes")]
    EnvMalformed,
    #[error("refusing to overwrite existing key file {path}")]
    Exists { path: PathBuf },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no system randomness: {0}")]
    Random(getrandom::Error),
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn decode32(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let mut v = Zeroizing::new(b64().decode(text.trim()).ok()?);
    if v.len() != 32 {
        v.zeroize();
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&v);
    Some(out)
}

fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?,
    );
    decode32(&text).ok_or_else(|| KeyError::Malformed {
        path: path.to_path_buf(),
    })
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)?;
    Ok(b)
}

impl MasterKey {
    /// Reads a file holding base64 of 32 bytes (surrounding whitespace allowed).
    pub fn from_file(path: &Path) -> Result<MasterKey, KeyError> {
        let bytes = read_key_file(path)?;
        let origin = std::fs::canonicalize(path)
            .ok()
            .or_else(|| Some(path.to_path_buf()));
        Ok(MasterKey { bytes, origin })
    }

    /// Reads `CUSTOS_MASTER_KEY` (base64 of 32 bytes).
    pub fn from_base64_env() -> Result<MasterKey, KeyError> {
        let v = Zeroizing::new(std::env::var(MASTER_KEY_ENV).map_err(|_| KeyError::EnvMissing)?);
        let bytes = decode32(&v).ok_or(KeyError::EnvMalformed)?;
        Ok(MasterKey {
            bytes,
            origin: None,
        })
    }

    /// A key from raw bytes (tests, benchmarks, embedding applications).
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey {
            bytes: Zeroizing::new(bytes),
            origin: None,
        }
    }

    /// The file this key was read from, if any.
    pub fn origin(&self) -> Option<&Path> {
        self.origin.as_deref()
    }

    /// HKDF-SHA256 expansion with a domain-separation label and the archive id,
    /// so keys of two archives sharing a master key are unrelated.
    pub(crate) fn derive(&self, label: &str, archive_id: &[u8; 16]) -> Zeroizing<[u8; 32]> {
        let hk = hkdf::Hkdf::<Sha256>::new(None, self.bytes.as_ref());
        let mut info = Vec::with_capacity(label.len() + 16);
        info.extend_from_slice(label.as_bytes());
        info.extend_from_slice(archive_id);
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF's 255*32 limit, so expand cannot fail.
        let _ = hk.expand(&info, out.as_mut());
        out
    }

    /// The check value stored in `archive.meta`.
    pub(crate) fn check_value(&self, archive_id: &[u8; 16]) -> [u8; 32] {
        let k = self.derive("custos-key-check-v1", archive_id);
        hmac_sha256(k.as_ref(), &[b"custos-key-check"])
    }
}

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// A loaded Ed25519 signing key file (base64 of the 32-byte seed).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let seed = read_key_file(path)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A loaded Ed25519 public key file (base64 of 32 bytes).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read_key_file(path)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
    })
}

/// What `keys_init` wrote.
#[derive(Debug, Clone)]
pub struct KeysCreated {
    pub master_key: PathBuf,
    pub signing_key: PathBuf,
    /// `<signing_key>.pub`: what an auditor needs to check checkpoints.
    pub public_key: PathBuf,
    pub verifying_key: VerifyingKey,
}

/// The public key path that goes with a signing key path.
pub fn public_key_path(signing_key_path: &Path) -> PathBuf {
    let mut s = signing_key_path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists {
            path: path.to_path_buf(),
        },
        _ => KeyError::Write {
            path: path.to_path_buf(),
            source,
        },
    })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Creates a new master key and signing key (mode 0600) and the signing
/// public key next to the latter (`.pub`, 0644). Refuses to overwrite any of
/// the three files; checks all three before writing any.
pub fn keys_init(master_key_path: &Path, signing_key_path: &Path) -> Result<KeysCreated, KeyError> {
    let public = public_key_path(signing_key_path);
    for p in [master_key_path, signing_key_path, public.as_path()] {
        if p.exists() {
            return Err(KeyError::Exists {
                path: p.to_path_buf(),
            });
        }
    }
    let master = Zeroizing::new(random_bytes::<32>().map_err(KeyError::Random)?);
    let seed = Zeroizing::new(random_bytes::<32>().map_err(KeyError::Random)?);
    let signing = SigningKey::from_bytes(&seed);
    let verifying = signing.verifying_key();
    write_new(
        master_key_path,
        &format!("{}\n", b64().encode(master.as_ref())),
        0o600,
    )?;
    write_new(
        signing_key_path,
        &format!("{}\n", b64().encode(seed.as_ref())),
        0o600,
    )?;
    write_new(
        &public,
        &format!("{}\n", b64().encode(verifying.as_bytes())),
        0o644,
    )?;
    Ok(KeysCreated {
        master_key: master_key_path.to_path_buf(),
        signing_key: signing_key_path.to_path_buf(),
        public_key: public,
        verifying_key: verifying,
    })
}

/// Magic and version of a wrapped segment key file.
const KEY_MAGIC: &[u8; 8] = b"CUSTOSKY";
const KEY_VERSION: u16 = 1;

/// Why a wrapped data key could not be unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    #[error("key file has a bad magic or version")]
    Format,
    #[error("key file does not authenticate under this master key and segment")]
    Auth,
}

fn key_aad(archive_id: &[u8; 16], segment: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(40);
    aad.extend_from_slice(b"custos-segment-key-v1");
    aad.extend_from_slice(archive_id);
    aad.extend_from_slice(&segment.to_be_bytes());
    aad
}

/// Wraps a segment data key with AES-256-GCM under the key-encryption key;
/// the AAD binds it to the archive and segment so key files cannot be swapped.
pub(crate) fn wrap_data_key(
    master: &MasterKey,
    archive_id: &[u8; 16],
    segment: u64,
    data_key: &[u8; 32],
) -> Result<Vec<u8>, getrandom::Error> {
    let kek = master.derive("custos-kek-v1", archive_id);
    let cipher =
        Aes256Gcm::new_from_slice(kek.as_ref()).map_err(|_| getrandom::Error::UNSUPPORTED)?;
    let nonce = random_bytes::<12>()?;
    let aad = key_aad(archive_id, segment);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: data_key,
                aad: &aad,
            },
        )
        .map_err(|_| getrandom::Error::UNSUPPORTED)?;
    let mut out = Vec::with_capacity(8 + 2 + 12 + ct.len());
    out.extend_from_slice(KEY_MAGIC);
    out.extend_from_slice(&KEY_VERSION.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

pub(crate) fn unwrap_data_key(
    master: &MasterKey,
    archive_id: &[u8; 16],
    segment: u64,
    file: &[u8],
) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
    if file.len() != 8 + 2 + 12 + 48
        || file.get(..8) != Some(KEY_MAGIC)
        || file.get(8..10) != Some(&KEY_VERSION.to_be_bytes()[..])
    {
        return Err(UnwrapError::Format);
    }
    let kek = master.derive("custos-kek-v1", archive_id);
    let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).map_err(|_| UnwrapError::Auth)?;
    let aad = key_aad(archive_id, segment);
    let nonce = file.get(10..22).ok_or(UnwrapError::Format)?;
    let ct = file.get(22..).ok_or(UnwrapError::Format)?;
    let pt = Zeroizing::new(
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| UnwrapError::Auth)?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    if pt.len() != 32 {
        return Err(UnwrapError::Format);
    }
    out.copy_from_slice(&pt);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_init_refuses_overwrite_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let mk = d.path().join("master.key");
        let sk = d.path().join("signing.key");
        let created = keys_init(&mk, &sk).unwrap();
        assert!(matches!(keys_init(&mk, &sk), Err(KeyError::Exists { .. })));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&mk).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let signing = load_signing_key(&sk).unwrap();
        assert_eq!(signing.verifying_key(), created.verifying_key);
        assert_eq!(
            load_verifying_key(&created.public_key).unwrap(),
            created.verifying_key
        );
        let m = MasterKey::from_file(&mk).unwrap();
        assert_eq!(format!("{m:?}"), "MasterKey(..)");
    }

    #[test]
    fn malformed_key_file_is_a_clear_error_without_contents() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.key");
        std::fs::write(&p, "c2VjcmV0LXNob3J0").unwrap();
        let err = MasterKey::from_file(&p).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not base64 of 32 bytes"), "{msg}");
        assert!(!msg.contains("c2VjcmV0"), "{msg}");
    }

    #[test]
    fn wrapped_key_is_bound_to_segment_and_master() {
        let m = MasterKey::from_bytes([7; 32]);
        let id = [1u8; 16];
        let dk = [9u8; 32];
        let w = wrap_data_key(&m, &id, 3, &dk).unwrap();
        assert_eq!(*unwrap_data_key(&m, &id, 3, &w).unwrap(), dk);
        assert_eq!(unwrap_data_key(&m, &id, 4, &w), Err(UnwrapError::Auth));
        assert_eq!(
            unwrap_data_key(&MasterKey::from_bytes([8; 32]), &id, 3, &w),
            Err(UnwrapError::Auth)
        );
    }
}
