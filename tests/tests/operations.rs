//! Running Custos as the firm's other services run: a real Prometheus scrapes the admin
//! endpoint's metrics and a PromQL query returns the messages sent; `/readyz` turns
//! unready when the upstream server goes down; `systemd-analyze verify` accepts the
//! shipped unit file.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use custos_e2e::config::section;
use custos_e2e::net::{free_port, http_get};
use custos_e2e::prometheus::Prometheus;
use custos_e2e::rig::{BoxError, Rig, RigOptions};
use custos_e2e::Tls;

type TestResult = Result<(), BoxError>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_the_messages_sent_and_readyz_follows_the_upstream() -> TestResult {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut rig = Rig::start(
        "operations-metrics",
        RigOptions {
            archive: true,
            rules: Some(
                "[[rule]]\nid = \"watch-ledger\"\nwhen = { body = { regex = \"(?i)ledger\" } }\naction = \"flag\"\n".into(),
            ),
            extra: section("admin", [("bind", admin.to_string())]),
            ..RigOptions::default()
        },
    )?;
    let (status, body) = http_get(admin, "/healthz")?;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(admin, "/readyz")?;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\n"),
        "{}",
        rig.context()
    );

    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::StartTls).await?;
    const SENT: u32 = 7;
    for i in 0..SENT {
        let body = if i == 0 {
            "the ledger is attached".to_string()
        } else {
            format!("metrics message {i}")
        };
        alice.send_chat("bob@example.test", &body).await?;
        bob.next_message().await?;
    }

    let dir = rig.dir.join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let prometheus = Prometheus::start(&dir, admin)?;
    // Each message crossed Custos twice: out on alice's stream, in on bob's.
    let wanted = [
        (
            "sum(custos_messages_total{direction=\"outbound\"})",
            f64::from(SENT),
        ),
        (
            "sum(custos_messages_total{direction=\"inbound\"})",
            f64::from(SENT),
        ),
        ("sum(custos_rule_hits_total{rule=\"watch-ledger\"})", 2.0),
        ("custos_connections_open", 2.0),
    ];
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        seen.clear();
        for (q, _) in &wanted {
            seen.push(prometheus.query(q)?);
        }
        let all = wanted
            .iter()
            .zip(&seen)
            .all(|((_, want), got)| *got == Some(*want));
        if all || start.elapsed() > Duration::from_secs(40) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for ((q, want), got) in wanted.iter().zip(&seen) {
        assert_eq!(*got, Some(*want), "{q}\n{}", rig.context());
    }
    // Every append was timed: the histogram counted at least the messages' copies.
    let appends = prometheus
        .query("custos_archive_append_seconds_count")?
        .ok_or("no append latency histogram")?;
    assert!(appends >= f64::from(2 * SENT), "{appends}");
    let (_, metrics) = http_get(admin, "/metrics")?;
    assert!(metrics.contains("custos_index_lag_records"), "{metrics}");
    assert!(metrics.contains("custos_archive_writable 1"), "{metrics}");
    drop(prometheus);

    // The upstream server goes away: the process is alive, but not ready.
    drop((alice, bob));
    assert!(rig.server.stop(), "prosody stopped");
    let (status, body) = http_get(admin, "/readyz")?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not ready: the upstream server") && body.contains("unreachable"),
        "{body}"
    );
    let (status, _) = http_get(admin, "/healthz")?;
    assert_eq!(status, 200);
    Ok(())
}

/// With `[web] cert` and `key` the review UI speaks HTTPS only, and its session cookie is
/// `Secure` without being asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_ui_serves_https_with_secure_cookies() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rig = Rig::start(
        "operations-web-tls",
        RigOptions {
            archive: true,
            web: true,
            web_tls: true,
            ..RigOptions::default()
        },
    )?;
    let addr = rig.web.ok_or("no web UI")?;
    let mut config = custos_e2e::certs::client_tls_config(rig.ca.cert_path())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    // The sign-in form's token cookie is the first cookie it sets.
    let cookie = answer
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .ok_or("no cookie set")?;
    assert!(cookie.contains("; secure"), "{cookie}");
    // Plain HTTP on the same port gets no page.
    let plain = http_get(addr, "/login");
    assert!(
        plain.as_ref().map_or(true, |(status, _)| *status != 200),
        "{plain:?}"
    );
    // XMPP is served before the review UI reads its state from the archive.
    rig.wait_for_log("web UI listening", Duration::from_secs(10))?;
    let log = rig.custos.log();
    let proxy_at = log
        .find("proxy listening")
        .ok_or("no proxy listening line")?;
    let web_at = log
        .find("web UI listening")
        .ok_or("no web UI listening line")?;
    assert!(proxy_at < web_at, "{}", rig.context());
    Ok(())
}

/// The unit in `dist/` as an operator installs it (with this build's binary and a
/// config in place of the packaged paths) passes `systemd-analyze verify`.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() -> TestResult {
    let root = custos_e2e::tools::workspace_root();
    let unit = std::fs::read_to_string(root.join("dist/custos.service"))?;
    for must in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/lib/custos/archive",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(must), "the unit lacks {must:?}");
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("custos.toml");
    std::fs::write(&config, "")?;
    let bin = custos_e2e::custos::custos_bin();
    let text = unit
        .replace("/usr/local/bin/custos", &bin.display().to_string())
        .replace("/etc/custos/custos.toml", &config.display().to_string());
    let path = dir.path().join("custos.service");
    std::fs::write(&path, text)?;
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .map_err(|e| format!("systemd-analyze: {e} (run scripts/setup.sh)"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    // Warnings about other units on the host are not the unit's; its own are.
    assert!(!said.contains("custos.service"), "{said}");
    Ok(())
}

/// A clean stop saves the review state beside the archive; the next start reads it back
/// and only the records written after it, and the UI answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_the_saved_review_state_back() -> TestResult {
    let mut rig = Rig::start(
        "operations-saved-state",
        RigOptions {
            archive: true,
            web: true,
            rules: Some(
                "[[rule]]\nid = \"promise\"\nwhen = { body = { regex = \"(?i)guarantee\" } }\naction = \"flag\"\n"
                    .into(),
            ),
            ..RigOptions::default()
        },
    )?;
    let web = rig.web.ok_or("no web UI")?;
    rig.wait_for_log("web UI listening", Duration::from_secs(10))?;
    {
        let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
        let mut bob = rig.connect("bob", "phone", Tls::StartTls).await?;
        alice
            .send_chat("bob@example.test", "returns are guaranteed")
            .await?;
        assert_eq!(bob.next_message().await?.body, "returns are guaranteed");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stopped = rig.custos.terminate(Duration::from_secs(20));
    assert!(stopped.is_some_and(|s| s.success()), "{}", rig.context());
    let archive = rig.archive_dir.clone().ok_or("no archive")?;
    let state = archive.join("state").join("web-ui.state");
    assert!(state.exists(), "no saved state\n{}", rig.custos.log_tail());
    assert!(rig.custos.log().contains("review state saved"));
    // Nothing of the traffic is readable in it.
    let raw = std::fs::read(&state)?;
    for plain in [&b"alice@example.test"[..], b"promise", b"guaranteed"] {
        assert!(!raw.windows(plain.len()).any(|w| w == plain));
    }

    rig.custos.start_again()?;
    rig.wait_for_log("web UI listening", Duration::from_secs(10))?;
    let log = rig.custos.log();
    assert!(log.contains("saved review state read back"), "{log}");
    assert!(!log.contains("reading the whole archive"), "{log}");
    let (status, _) = http_get(web, "/login")?;
    assert_eq!(status, 200);
    Ok(())
}
