//! Running the real `custos` binary: `custos serve` as a child process on loopback ports
//! picked at run time, and one-shot CLI commands (`search`, `verify`, …).
//!
//! The binary is the one cargo built for this test run: `CUSTOS_BIN` if set, else
//! `custos` next to the test executable's `deps/` directory.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::net::{free_port, wait_for_port};
use crate::process::{tail, terminate_child, DEFAULT_GRACE};

/// Where the `custos` binary is.
pub fn custos_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CUSTOS_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/custos
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .map(Path::to_owned)
        .unwrap_or_default();
    profile_dir.join("custos")
}

/// Starting or talking to Custos failed.
#[derive(Debug, thiserror::Error)]
pub enum CustosError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("custos did not start: {reason}\n--- log tail ---\n{log}")]
    Start { reason: String, log: String },
}

/// A running `custos serve`. Stopped by pid (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Custos {
    child: Option<Child>,
    config_path: PathBuf,
    log_path: PathBuf,
    /// Client listener addresses in configuration order.
    listeners: Vec<SocketAddr>,
}

/// One `[[listener]]` to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    StartTls,
    Direct,
}

impl Custos {
    /// Writes `custos.toml` in `dir`: one listener per `kinds` entry on fresh loopback
    /// ports (certificate `cert`/`key`), merged with `config` (the `[upstream]`,
    /// `[archive]`… sections, and listeners of other kinds), and starts `custos serve`,
    /// waiting until every listener of `kinds` accepts.
    pub fn start(
        dir: &Path,
        kinds: &[ListenerKind],
        cert: &Path,
        key: &Path,
        extra: &crate::config::Table,
    ) -> Result<Custos, CustosError> {
        Custos::start_as(dir, kinds, cert, key, extra, None)
    }

    /// [`Custos::start`], running the process as `uid:gid` (via `setpriv`) when given.
    pub fn start_as(
        dir: &Path,
        kinds: &[ListenerKind],
        cert: &Path,
        key: &Path,
        extra: &crate::config::Table,
        run_as: Option<(u32, u32)>,
    ) -> Result<Custos, CustosError> {
        use crate::config::{merge, path, render, table, Table, Value};
        let mut listeners = Vec::new();
        let mut tables = Vec::new();
        for kind in kinds {
            let port = free_port().map_err(|source| CustosError::Io {
                what: "picking a port".into(),
                source,
            })?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            listeners.push(addr);
            let tls = match kind {
                ListenerKind::StartTls => "starttls",
                ListenerKind::Direct => "direct",
            };
            tables.push(Value::Table(table([
                ("bind", Value::String(addr.to_string())),
                ("tls", Value::String(tls.into())),
                ("cert", path(cert)),
                ("key", path(key)),
            ])));
        }
        let mut config: Table = table([("listener", Value::Array(tables))]);
        merge(&mut config, extra.clone());
        let config_path = dir.join("custos.toml");
        std::fs::write(&config_path, render(&config)).map_err(|source| CustosError::Io {
            what: format!("writing {}", config_path.display()),
            source,
        })?;
        Custos::start_with_config(&config_path, listeners, run_as)
    }

    /// Starts `custos serve --config FILE` for a config written by the caller.
    pub fn start_with_config(
        config_path: &Path,
        listeners: Vec<SocketAddr>,
        run_as: Option<(u32, u32)>,
    ) -> Result<Custos, CustosError> {
        let dir = config_path.parent().unwrap_or(Path::new("."));
        let log_path = dir.join("custos.log");
        let log = std::fs::File::create(&log_path).map_err(|source| CustosError::Io {
            what: format!("creating {}", log_path.display()),
            source,
        })?;
        let stderr = log.try_clone().map_err(|source| CustosError::Io {
            what: "duplicating the log handle".into(),
            source,
        })?;
        let mut cmd = match run_as {
            Some((uid, gid)) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(custos_bin());
                cmd
            }
            None => Command::new(custos_bin()),
        };
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(config_path)
            .env(
                "CUSTOS_LOG",
                std::env::var("CUSTOS_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|source| CustosError::Io {
                what: format!("starting {}", custos_bin().display()),
                source,
            })?;
        let mut custos = Custos {
            child: Some(child),
            config_path: config_path.to_owned(),
            log_path,
            listeners,
        };
        for addr in custos.listeners.clone() {
            if !wait_for_port(addr.port(), Duration::from_secs(15)) {
                let reason = match custos.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => format!("exited with {status}"),
                    _ => format!("{addr} did not accept within 15 s"),
                };
                return Err(CustosError::Start {
                    reason,
                    log: custos.log_tail(),
                });
            }
        }
        Ok(custos)
    }

    pub fn listener(&self, index: usize) -> SocketAddr {
        self.listeners[index]
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log(), 6000)
    }

    /// `custos search --json QUERY`, parsed: one object per logical message, its copies
    /// under `copies`.
    pub fn search(&self, query: &str) -> Result<Vec<serde_json::Value>, crate::rig::BoxError> {
        self.json_lines(&["search", "--json", query])
    }

    /// `custos search --json --copies QUERY`, parsed: one object per record (copy).
    pub fn search_copies(
        &self,
        query: &str,
    ) -> Result<Vec<serde_json::Value>, crate::rig::BoxError> {
        self.json_lines(&["search", "--json", "--copies", query])
    }

    /// [`Custos::search_copies`] polled every 100 ms until at least `want` records match
    /// or `limit` passes (the index is near-real-time); the last answer.
    pub fn search_copies_until(
        &self,
        query: &str,
        want: usize,
        limit: Duration,
    ) -> Result<Vec<serde_json::Value>, crate::rig::BoxError> {
        poll(want, limit, || self.search_copies(query))
    }

    /// `custos ARGS --config …` whose stdout is one JSON object per line, parsed.
    fn json_lines(&self, args: &[&str]) -> Result<Vec<serde_json::Value>, crate::rig::BoxError> {
        let out = self.command(args)?;
        if !out.status.success() {
            return Err(format!(
                "custos {} failed: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let text = String::from_utf8(out.stdout)?;
        Ok(text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?)
    }

    /// Whether the process has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_)) | Err(_)),
            None => true,
        }
    }

    /// Sends SIGTERM and waits up to `limit` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts `custos serve` again with the same configuration and listeners, once the
    /// previous process has exited (see [`Custos::terminate`]). The previous log is kept
    /// as `custos.log.1`.
    pub fn start_again(&mut self) -> Result<(), CustosError> {
        if self.child.is_some() {
            return Err(CustosError::Start {
                reason: "the previous process is still running".into(),
                log: self.log_tail(),
            });
        }
        let kept = self.log_path.with_extension("log.1");
        std::fs::rename(&self.log_path, &kept).map_err(|source| CustosError::Io {
            what: format!("keeping {}", self.log_path.display()),
            source,
        })?;
        let again = Custos::start_with_config(&self.config_path, self.listeners.clone(), None)?;
        *self = again;
        Ok(())
    }

    /// Runs `custos ARGS… --config FILE` to completion.
    pub fn command(&self, args: &[&str]) -> Result<Output, CustosError> {
        run_custos(args, Some(&self.config_path))
    }
}

/// Runs the `custos` binary with `args` (plus `--config FILE` when given).
pub fn run_custos(args: &[&str], config: Option<&Path>) -> Result<Output, CustosError> {
    let mut cmd = Command::new(custos_bin());
    cmd.args(args);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| CustosError::Io {
            what: format!("running custos {}", args.join(" ")),
            source,
        })
}

impl Drop for Custos {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            terminate_child(child, DEFAULT_GRACE);
        }
    }
}

/// `custos user add --config FILE --role ROLE NAME`, with the password on stdin.
pub fn add_user(config: &Path, name: &str, role: &str, password: &str) -> Result<(), CustosError> {
    use std::io::Write;
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| CustosError::Io { what, source }
    };
    let mut child = Command::new(custos_bin())
        .args(["user", "add", "--config"])
        .arg(config)
        .args(["--role", role, name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("starting custos user add"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .map_err(io("writing the password"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io("waiting for custos user add"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CustosError::Start {
            reason: "custos user add failed".into(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Calls `search` every 100 ms until it returns at least `want` hits or `limit` passes;
/// the last answer.
pub fn poll(
    want: usize,
    limit: Duration,
    mut search: impl FnMut() -> Result<Vec<serde_json::Value>, crate::rig::BoxError>,
) -> Result<Vec<serde_json::Value>, crate::rig::BoxError> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let hits = search()?;
        if hits.len() >= want || std::time::Instant::now() > deadline {
            return Ok(hits);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
