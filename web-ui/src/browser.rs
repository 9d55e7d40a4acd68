//! A real headless Chromium driven through chromedriver (WebDriver), for
//! end-to-end tests of the review UI. Reusable by any scenario: start it,
//! [`Browser::sign_in`], drive pages with [`Browser::client`], save
//! screenshots, and [`Browser::close`] explicitly.
//!
//! ```text
//!  test ──fantoccini (HTTP, loopback)──▶ chromedriver :free port ──▶ chromium --headless
//!                                                                      │
//!                                                     web UI 127.0.0.1 ◀┘
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

/// Why the browser could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    // The machine.
    #[error("starting {program}: {source} (install Debian `chromium` and `chromium-driver`)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("chromedriver did not accept connections on port {0} within 20 s")]
    DriverStart(u16),
    #[error("finding a free loopback port: {0}")]
    Port(std::io::Error),
    // The WebDriver session.
    #[error("opening a WebDriver session: {0}")]
    Session(#[from] fantoccini::error::NewSessionError),
    #[error("WebDriver command failed: {0}")]
    Command(#[from] fantoccini::error::CmdError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The flags every run uses: headless, no sandbox (containers), nothing that
/// phones home or updates itself, and a profile of our own.
pub fn chromium_args(profile: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args
}

/// A running chromedriver and one browser session.
pub struct Browser {
    driver: tokio::process::Child,
    client: Client,
}

fn free_port() -> Result<u16, BrowserError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(BrowserError::Port)?;
    Ok(l.local_addr().map_err(BrowserError::Port)?.port())
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless
    /// Chromium with a fresh profile in `profile` (an empty directory the
    /// caller owns and removes).
    pub async fn start(profile: &Path) -> Result<Browser, BrowserError> {
        let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port()?;
        let mut driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BrowserError::Spawn {
                program: chromedriver.clone(),
                source,
            })?;
        let mut up = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !up {
            let _ = driver.kill().await;
            return Err(BrowserError::DriverStart(port));
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": chromium_args(profile) }),
        );
        let client =
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    let _ = driver.kill().await;
                    return Err(e.into());
                }
            };
        Ok(Browser { driver, client })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Signs in through the form at `base` (e.g. `http://127.0.0.1:8080`).
    pub async fn sign_in(
        &self,
        base: &str,
        user: &str,
        password: &str,
    ) -> Result<(), BrowserError> {
        self.client.goto(&format!("{base}/login")).await?;
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id("user"))
            .await?
            .send_keys(user)
            .await?;
        self.client
            .find(Locator::Id("password"))
            .await?
            .send_keys(password)
            .await?;
        self.client
            .find(Locator::Id("sign-in"))
            .await?
            .click()
            .await?;
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Id("sign-out"))
            .await?;
        Ok(())
    }

    /// Saves a PNG of the viewport to `path` (directories created).
    pub async fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let png = self.client.screenshot().await?;
        let werr = |source| BrowserError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        std::fs::write(path, png).map_err(werr)
    }

    /// Ends the browser session and stops chromedriver (and with it Chromium).
    pub async fn close(mut self) -> Result<(), BrowserError> {
        let closed = self.client.close().await;
        let _ = self.driver.kill().await;
        closed.map_err(BrowserError::from)
    }
}
