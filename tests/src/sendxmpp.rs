//! `go-sendxmpp`: a second, independent client implementation (Go's TLS
//! stack and go-xmpp), for one-shot sends and a simple listener.
//!
//! The test CA is trusted through `SSL_CERT_FILE`, which Go's crypto/x509
//! honours on Linux; `-n` (skip verification) is never used.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::process::{tail, terminate};
use crate::tools::{self, ToolError};

/// Account and server for a go-sendxmpp run.
#[derive(Debug, Clone)]
pub struct SendxmppOptions {
    /// Bare JID to log in as.
    pub jid: String,
    /// Password.
    pub password: String,
    /// Server (or proxy) address.
    pub addr: SocketAddr,
    /// Direct TLS (`--tls`, XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
    /// The CA to trust (exported as `SSL_CERT_FILE`).
    pub ca_file: PathBuf,
    /// Bound on the whole run (send) or on each wait (listener).
    pub timeout: Duration,
}

/// go-sendxmpp failed or timed out.
#[derive(Debug, thiserror::Error)]
pub enum SendxmppError {
    /// go-sendxmpp is not installed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Spawning or talking to it failed.
    #[error("go-sendxmpp: {what}: {source}")]
    Io {
        /// What the harness was doing.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("go-sendxmpp exited with {status}: {output}")]
    Failed {
        /// Exit status.
        status: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// It did not finish (send) or print (listener) in time.
    #[error("go-sendxmpp timed out after {0:?}")]
    Timeout(Duration),
    /// The listener exited.
    #[error("go-sendxmpp listener exited: {0}")]
    Exited(String),
}

fn command(opts: &SendxmppOptions) -> Result<Command, SendxmppError> {
    let bin = tools::go_sendxmpp()?;
    let mut cmd = Command::new(bin);
    cmd.env("SSL_CERT_FILE", &opts.ca_file)
        // An empty directory list keeps Go from adding the system store.
        .env("SSL_CERT_DIR", "/nonexistent-custos-e2e")
        // Without -f it would read ~/.config/go-sendxmpp/sendxmpprc; point it
        // at nothing so a developer's own account never leaks in.
        .args(["-f", "/dev/null"])
        .args(["-u", &opts.jid, "-p", &opts.password])
        .args(["-j", &opts.addr.to_string()])
        .args(["--timeout", &opts.timeout.as_secs().max(1).to_string()]);
    if opts.direct_tls {
        cmd.arg("--tls");
    }
    cmd.kill_on_drop(true);
    Ok(cmd)
}

/// Sends one chat message with go-sendxmpp and waits (bounded) for it to
/// exit successfully.
pub async fn go_sendxmpp_send(
    opts: &SendxmppOptions,
    to: &str,
    body: &str,
) -> Result<(), SendxmppError> {
    let mut cmd = command(opts)?;
    cmd.arg(to)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| SendxmppError::Io {
        what: "spawn",
        source,
    })?;
    // The message is read from stdin, as with `echo body | go-sendxmpp`.
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(body.as_bytes())
            .await
            .map_err(|source| SendxmppError::Io {
                what: "writing message",
                source,
            })?;
    }
    let limit = opts.timeout + Duration::from_secs(2);
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Err(_) => Err(SendxmppError::Timeout(limit)),
        Ok(Err(source)) => Err(SendxmppError::Io {
            what: "waiting",
            source,
        }),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(SendxmppError::Failed {
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }),
    }
}

/// `go-sendxmpp -l`: stays online and prints each received message as a
/// line on stdout. Stopped by pid on drop.
#[derive(Debug)]
pub struct SendxmppListener {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    timeout: Duration,
}

impl SendxmppListener {
    /// Starts the listener. It is online once it has sent its presence;
    /// callers should wait for a presence from it (or retry sends) before
    /// relying on delivery.
    pub async fn start(opts: &SendxmppOptions) -> Result<Self, SendxmppError> {
        let mut cmd = command(opts)?;
        cmd.arg("-l")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| SendxmppError::Io {
            what: "spawn listener",
            source,
        })?;
        let stdout = child
            .stdout
            .take()
            .ok_or(SendxmppError::Exited("no stdout pipe".to_string()))?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
            timeout: opts.timeout,
        })
    }

    /// The next non-empty line printed (go-sendxmpp prints
    /// `<from>: <body>`), within the timeout.
    pub async fn next_line(&mut self) -> Result<String, SendxmppError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Err(_) => return Err(SendxmppError::Timeout(self.timeout)),
                Ok(Ok(Some(line))) if line.trim().is_empty() => continue,
                Ok(Ok(Some(line))) => return Ok(line),
                Ok(Ok(None)) | Ok(Err(_)) => {
                    return Err(SendxmppError::Exited(self.stderr().await))
                }
            }
        }
    }

    async fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), err.read_to_string(&mut text)).await;
        }
        tail(&text, 2000)
    }
}

impl Drop for SendxmppListener {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let child = &mut self.child;
            terminate(pid, Duration::from_secs(1), || {
                matches!(child.try_wait(), Ok(Some(_)) | Err(_))
            });
        }
    }
}
