//! A real Prometheus (Debian's `prometheus`) scraping one target on loopback, queried
//! through its HTTP API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::{free_port, http_get, url_encode, wait_for_port};
use crate::process::{terminate_child, DEFAULT_GRACE};

#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("prometheus: {0}")]
    Io(#[from] std::io::Error),
    #[error("prometheus did not start: {0}")]
    Start(String),
    #[error("prometheus query {query:?}: {why}")]
    Query { query: String, why: String },
}

/// A Prometheus server; stopped by pid when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping `target`'s `/metrics` every second.
    pub fn start(dir: &Path, target: SocketAddr) -> Result<Prometheus, PrometheusError> {
        let port = free_port()?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: custos\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                PrometheusError::Start(format!(
                    "{e} (is Debian's prometheus installed? run scripts/setup.sh)"
                ))
            })?;
        let mut p = Prometheus {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        // The port opens before the storage is: its API answers 503 until `/-/ready` is 200.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let ready = wait_for_port(port, Duration::from_secs(30))
            && loop {
                if matches!(http_get(p.addr, "/-/ready"), Ok((200, _))) {
                    break true;
                }
                if std::time::Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
        if !ready {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            terminate_child(&mut p.child, DEFAULT_GRACE);
            return Err(PrometheusError::Start(crate::process::tail(&log, 2000)));
        }
        Ok(p)
    }

    /// The value of an instant query that yields one sample, `None` while it yields none.
    pub fn query(&self, expr: &str) -> Result<Option<f64>, PrometheusError> {
        let fail = |why: String| PrometheusError::Query {
            query: expr.to_string(),
            why,
        };
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(expr)),
        )?;
        if status != 200 {
            return Err(fail(format!("HTTP {status}: {body}")));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| fail(e.to_string()))?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or_else(|| fail(format!("no result in {body}")))?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => one["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| fail(format!("no value in {one}"))),
            more => Err(fail(format!("{} samples, expected one", more.len()))),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        terminate_child(&mut self.child, DEFAULT_GRACE);
    }
}
