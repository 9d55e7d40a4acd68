//! Locating the workspace and the external programs the scenarios drive.
//!
//! Nothing here installs anything: `scripts/setup.sh` does. A missing tool is
//! an error naming the tool and the script, so a scenario never passes by
//! quietly skipping what it was meant to exercise.

use std::env;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the Python interpreter used for the
/// slixmpp client (default: `<workspace>/.venv/bin/python`).
pub const PYTHON_ENV: &str = "CUSTOS_TEST_PYTHON";

/// A required program is not where the harness looks for it.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Not on `PATH` (or at the path an override names).
    #[error("{tool} not found ({looked}); run scripts/setup.sh")]
    Missing {
        /// Program name, e.g. `prosody`.
        tool: &'static str,
        /// Where the harness looked.
        looked: String,
    },
}

/// Paths of every external program the harness runs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The Cargo workspace root (holds `Cargo.lock`, `.venv`, `scripts/`).
    pub root: PathBuf,
    /// Python interpreter with slixmpp installed.
    pub python: PathBuf,
    /// The `prosody` server binary.
    pub prosody: PathBuf,
    /// `prosodyctl`, used to register accounts.
    pub prosodyctl: PathBuf,
}

impl Tools {
    /// Finds the tools Prosody and the slixmpp client need.
    ///
    /// `go-sendxmpp` is looked up separately by [`go_sendxmpp`], since only
    /// the scenarios that use it need it.
    pub fn locate() -> Result<Self, ToolError> {
        Ok(Self {
            root: workspace_root(),
            python: python()?,
            prosody: find_on_path("prosody")?,
            prosodyctl: find_on_path("prosodyctl")?,
        })
    }
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The Python interpreter for the slixmpp client: `CUSTOS_TEST_PYTHON` if
/// set, else the venv that `scripts/setup.sh` creates.
pub fn python() -> Result<PathBuf, ToolError> {
    let path = match env::var_os(PYTHON_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".venv").join("bin").join("python"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(ToolError::Missing {
            tool: "python with slixmpp",
            looked: path.display().to_string(),
        })
    }
}

/// The `go-sendxmpp` binary.
pub fn go_sendxmpp() -> Result<PathBuf, ToolError> {
    find_on_path("go-sendxmpp")
}

/// The directory of the Python client scripts (`tests/clients`).
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Searches `PATH`, then `/usr/bin` and `/usr/sbin` (Debian puts Prosody's
/// tools there, and a sanitised CI `PATH` may lack them).
pub fn find_on_path(tool: &'static str) -> Result<PathBuf, ToolError> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/bin"));
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.iter()
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| ToolError::Missing {
            tool,
            looked: "PATH, /usr/bin, /usr/sbin".to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest =
            std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap_or_default();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn missing_tool_error_points_at_setup_script() {
        let err = find_on_path("custos-no-such-tool-xyz").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("custos-no-such-tool-xyz"), "{text}");
        assert!(text.contains("scripts/setup.sh"), "{text}");
    }
}
