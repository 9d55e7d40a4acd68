//! A real S3-compatible server with Object Lock: moto's server mode (PyPI, installed
//! into the test venv by `scripts/setup.sh`), one per test on a free loopback port,
//! stopped by pid when the handle drops. [`S3Server::probe`] drives boto3 against it
//! (`tests/clients/s3_probe.py`), so what the tests assert about the bucket is read
//! and attacked by a client that is not Custos's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{tail, terminate_child, DEFAULT_GRACE};
use crate::rig::BoxError;
use crate::tools::{clients_dir, python};

/// The access key pair the tests use (moto accepts any).
pub const ACCESS_KEY: &str = "custos-test";
pub const SECRET_KEY: &str = "custos-test-secret";

/// One object version as the probe lists it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Version {
    pub key: String,
    pub version: String,
    pub size: u64,
    pub latest: bool,
    pub delete_marker: bool,
    pub mode: Option<String>,
    /// RFC 3339 (`2026-12-03T17:08:23.544000+00:00`).
    pub until: Option<String>,
    pub legal_hold: bool,
}

pub struct S3Server {
    child: Child,
    port: u16,
    log: PathBuf,
    python: PathBuf,
}

impl S3Server {
    /// Starts moto on a free port, logging to `dir/moto.log`.
    pub fn start(dir: &Path) -> Result<S3Server, BoxError> {
        let python = python()?;
        let port = crate::free_port()?;
        let log = dir.join("moto.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let server = S3Server {
            child,
            port,
            log,
            python,
        };
        if !crate::wait_for_port(port, Duration::from_secs(30)) {
            return Err(format!("moto did not listen on {port}\n{}", server.log_tail()).into());
        }
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            4000,
        )
    }

    /// Runs `s3_probe.py ENDPOINT BUCKET ARGS…` and returns its standard output.
    pub fn probe(&self, bucket: &str, args: &[&str]) -> Result<String, BoxError> {
        let out = Command::new(&self.python)
            .arg(clients_dir().join("s3_probe.py"))
            .arg(self.endpoint())
            .arg(bucket)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "s3_probe {args:?} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every version and delete marker under `prefix`.
    pub fn versions(&self, bucket: &str, prefix: &str) -> Result<Vec<Version>, BoxError> {
        let text = self.probe(bucket, &["versions", prefix])?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Ok(serde_json::from_str(l)?))
            .collect()
    }

    /// A credentials file for `[archive.object_store] credentials`, written to `path`.
    pub fn write_credentials(path: &Path) -> Result<(), BoxError> {
        std::fs::write(
            path,
            format!("access_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\n"),
        )?;
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        terminate_child(&mut self.child, DEFAULT_GRACE);
    }
}
