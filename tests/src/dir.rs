//! Per-test temporary directories.

use std::io;
use std::path::{Path, PathBuf};

/// Set to `1` to keep every [`TestDir`] after the test (its path is printed
/// on stderr), e.g. to read Prosody's log after a failure.
pub const KEEP_ENV: &str = "CUSTOS_KEEP_TEST_DIRS";

/// A temporary directory removed on drop, unless `CUSTOS_KEEP_TEST_DIRS=1`.
///
/// Every harness component writes its files (config, certificates, logs,
/// data) below one `TestDir`, so a kept directory holds the whole scenario.
#[derive(Debug)]
pub struct TestDir {
    // `None` once kept, so drop leaves the files alone.
    inner: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates a fresh directory whose name starts with `custos-<label>-`.
    pub fn new(label: &str) -> io::Result<Self> {
        let inner = tempfile::Builder::new()
            .prefix(&format!("custos-{label}-"))
            .tempdir()?;
        let path = inner.path().to_path_buf();
        Ok(Self {
            inner: Some(inner),
            path,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Keeps the directory after drop regardless of the environment.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(inner) = self.inner.take() {
            // `keep` disarms tempfile's deletion on drop.
            let _ = inner.keep();
        }
        self.path.clone()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        if keep && self.inner.is_some() {
            let path = self.keep();
            eprintln!("custos-e2e: kept test dir {}", path.display());
        }
    }
}

/// Copies the tree at `from` into `to` (created), files and directories alike.
pub fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_on_drop_unless_kept() -> io::Result<()> {
        let dir = TestDir::new("dirtest")?;
        let path = dir.path().to_path_buf();
        std::fs::write(dir.join("f"), b"x")?;
        assert!(path.join("f").is_file());
        drop(dir);
        // The environment may ask to keep dirs; only assert removal otherwise.
        if std::env::var(KEEP_ENV).map_or(true, |v| v != "1") {
            assert!(!path.exists());
        }

        let mut kept = TestDir::new("dirtest")?;
        let path = kept.keep();
        drop(kept);
        assert!(path.is_dir());
        std::fs::remove_dir_all(&path)?;
        Ok(())
    }
}
