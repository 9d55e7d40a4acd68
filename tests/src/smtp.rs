//! A real SMTP server for journaling tests: aiosmtpd (PyPI, in the test venv) on a
//! loopback port, delivering into a Maildir; stopped by pid and restartable on the same
//! port, so a test can take it away mid-delivery.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::{free_port, wait_for_port};
use crate::process::{tail, terminate_child, DEFAULT_GRACE};
use crate::rig::BoxError;
use crate::tools::{clients_dir, python};

pub struct SmtpServer {
    child: Option<Child>,
    pub port: u16,
    maildir: PathBuf,
    log: PathBuf,
}

/// One received message as `tests/clients/mail_probe.py` parsed it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Mail {
    pub message_id: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub participants: String,
    pub period: String,
    pub date: String,
    pub body: Option<String>,
    pub defects: Vec<String>,
}

impl SmtpServer {
    pub fn start(dir: &Path) -> Result<SmtpServer, BoxError> {
        let mut s = SmtpServer {
            child: None,
            port: free_port()?,
            maildir: dir.join("maildir"),
            log: dir.join("smtp.log"),
        };
        s.restart()?;
        Ok(s)
    }

    /// (Re)starts the server on its port.
    pub fn restart(&mut self) -> Result<(), BoxError> {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(python()?)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        if !wait_for_port(self.port, Duration::from_secs(20)) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            self.stop();
            return Err(format!("aiosmtpd did not listen: {}", tail(&log, 2000)).into());
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate_child(&mut c, DEFAULT_GRACE);
        }
    }

    /// Every message received so far.
    pub fn mails(&self) -> Result<Vec<Mail>, BoxError> {
        if !self.maildir.join("new").exists() {
            return Ok(Vec::new());
        }
        let out = Command::new(python()?)
            .arg(clients_dir().join("mail_probe.py"))
            .arg(&self.maildir)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "mail_probe failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}").into()))
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}
