//! Converse.js, the web XMPP client, served from a local page for a real Chromium: the
//! page signs in through a WebSocket endpoint and exposes Converse's API to the test as
//! `window.custos.api` (a plugin registered before start).
//!
//! The release is the npm package `converse.js` (its prebuilt `dist/`), which
//! `scripts/setup.sh` unpacks into `target/converse.js-<version>/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::wait_for_port;
use crate::process::{terminate_child, DEFAULT_GRACE};
use crate::rig::BoxError;

/// The Converse.js release the tests run.
pub const VERSION: &str = "12.0.0";

/// The unpacked `dist/` directory: `CUSTOS_CONVERSE_DIST`, else setup's.
pub fn dist_dir() -> Result<PathBuf, BoxError> {
    let dir = match std::env::var_os("CUSTOS_CONVERSE_DIST") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => crate::tools::workspace_root()
            .join("target")
            .join(format!("converse.js-{VERSION}"))
            .join("dist"),
    };
    if dir.join("converse.min.js").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "Converse.js {VERSION} is not at {} (run scripts/setup.sh)",
            dir.display()
        )
        .into())
    }
}

/// What the page signs in as, and where.
pub struct PageOptions<'a> {
    pub websocket_url: &'a str,
    pub jid: &'a str,
    pub password: &'a str,
}

/// A static HTTP server (Python's `http.server`, on loopback) for one Converse page.
pub struct ConversePage {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl ConversePage {
    /// Writes `index.html` into `dir` (with `dist/` linked beside it) and serves `dir` on
    /// `port` of 127.0.0.1.
    pub fn serve(dir: &Path, port: u16, opts: &PageOptions<'_>) -> Result<ConversePage, BoxError> {
        std::fs::create_dir_all(dir)?;
        let dist = dist_dir()?;
        let link = dir.join("dist");
        if !link.exists() {
            std::os::unix::fs::symlink(&dist, &link)?;
        }
        let settings = serde_json::json!({
            "websocket_url": opts.websocket_url,
            "jid": opts.jid,
            "password": opts.password,
            "auto_login": true,
            "auto_reconnect": false,
            "discover_connection_methods": false,
            "view_mode": "fullscreen",
            "whitelisted_plugins": ["custos-probe"],
            "allow_non_roster_messaging": true,
            "show_controlbox_by_default": true,
            "play_sounds": false,
            "show_desktop_notifications": false,
            "i18n": "en",
            "assets_path": "dist/",
            "loglevel": "debug",
        });
        let page = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>Converse.js through Custos</title>\
             <link rel=\"stylesheet\" href=\"dist/converse.min.css\"></head><body>\n\
             <script src=\"dist/converse.min.js\"></script>\n<script>\n\
             window.custos = {{ connected: false, api: null, log: [] }};\n\
             for (const level of ['log', 'debug', 'info', 'warn', 'error']) {{\n\
               const orig = console[level].bind(console);\n\
               console[level] = (...args) => {{\n\
                 if (window.custos.log.length < 2000) window.custos.log.push(level + ': ' + args.map(String).join(' '));\n\
                 orig(...args);\n\
               }};\n\
             }}\n\
             window.addEventListener('unhandledrejection', e => window.custos.log.push('unhandled rejection: ' + (e.reason && e.reason.stack || e.reason)));\n\
             window.addEventListener('error', e => window.custos.log.push('error event: ' + e.message));\n\
             converse.plugins.add('custos-probe', {{ initialize() {{\n\
               const api = this._converse.api;\n\
               window.custos.api = api;\n\
               api.listen.on('connected', () => {{ window.custos.connected = true; }});\n\
             }} }});\n\
             converse.initialize({settings});\n</script></body></html>\n"
        );
        std::fs::write(dir.join("index.html"), page)?;
        let log = std::fs::File::create(dir.join("http.log"))?;
        let child = Command::new(crate::tools::python()?)
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut page = ConversePage {
            child: Some(child),
            addr: ([127, 0, 0, 1], port).into(),
        };
        if !wait_for_port(port, Duration::from_secs(15)) {
            page.stop();
            return Err(format!("the page server did not listen on {port}").into());
        }
        Ok(page)
    }

    pub fn url(&self) -> String {
        format!("http://{}/index.html", self.addr)
    }

    /// The origin the browser sends from this page.
    pub fn origin(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    pub fn stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            terminate_child(child, DEFAULT_GRACE);
        }
        self.child = None;
    }
}

impl Drop for ConversePage {
    fn drop(&mut self) {
        self.stop();
    }
}
