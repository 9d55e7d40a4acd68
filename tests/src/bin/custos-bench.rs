//! What Custos costs on the wire: message round-trip latency and throughput for one
//! client talking to itself through a real Prosody, directly and through Custos (with the
//! archive writing and fsyncing every message before forwarding it, and the demo rules).
//!
//! `cargo run --release -p custos-e2e --bin custos-bench [MESSAGES]` (default 2000).
//! Prints p50/p99 latency of sequential round trips, the rate of a pipelined burst from
//! one session, and the aggregate rate of eight sessions bursting at once (where the
//! archive's group commit shares each fsync between sessions).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use custos_e2e::config::{merge, path, render, section, Value};
use custos_e2e::custos::{run_custos, Custos, ListenerKind};
use custos_e2e::{Prosody, ProsodyOptions, TestCa, TestDir, User};
use custos_proxy::framer::{Frame, FrameLimits, Framer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const HEADER: &str = "<stream:stream to='example.test' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// A minimal XMPP client over Direct TLS: SASL PLAIN, resource binding, then messages.
struct Client {
    tls: TlsStream<TcpStream>,
    framer: Framer,
    buf: Vec<u8>,
    jid: String,
}

impl Client {
    async fn connect(
        addr: SocketAddr,
        ca: &std::path::Path,
        user: &str,
        password: &str,
    ) -> Result<Client, BoxError> {
        let config = custos_e2e::certs::client_tls_config(ca)?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("example.test")?,
                tcp,
            )
            .await?;
        let mut c = Client {
            tls,
            framer: Framer::new(FrameLimits::default()),
            buf: vec![0; 64 * 1024],
            jid: String::new(),
        };
        c.send(HEADER).await?;
        c.until("features").await?;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        ))
        .await?;
        c.until("success").await?;
        c.framer.restart();
        c.send(HEADER).await?;
        c.until("features").await?;
        c.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource></bind></iq>")
            .await?;
        let bound = c.until("iq").await?;
        c.jid = bound
            .child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.children().find(|c| c.name == "jid"))
            .map(|j| j.text())
            .ok_or("no bound JID")?;
        Ok(c)
    }

    async fn send(&mut self, s: &str) -> Result<(), BoxError> {
        self.tls.write_all(s.as_bytes()).await?;
        self.tls.flush().await?;
        Ok(())
    }

    /// Reads until a top-level element named `name` arrives; returns it.
    async fn until(&mut self, name: &str) -> Result<custos_proxy::xml::Element, BoxError> {
        loop {
            while let Some(frame) = self.framer.next_frame()? {
                if let Frame::Stanza(s) = frame {
                    if s.root.name == name {
                        return Ok(s.root);
                    }
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.tls.read(&mut self.buf))
                .await??;
            if n == 0 {
                return Err(format!("connection closed waiting for <{name}/>").into());
            }
            self.framer.push(&self.buf[..n]);
        }
    }

    fn message(&self, i: usize) -> String {
        format!(
            "<message to='{}' type='chat' id='b{i}'><body>benchmark message {i}: the quarterly numbers look fine</body></message>",
            self.jid
        )
    }
}

/// One session's pipelined burst of `n` messages to itself, at most 64 in flight.
async fn burst(c: &mut Client, first: usize, n: usize) -> Result<(), BoxError> {
    let (mut sent, mut received) = (0, 0);
    while received < n {
        while sent < n && sent - received < 64 {
            let m = c.message(first + sent);
            c.tls.write_all(m.as_bytes()).await?;
            sent += 1;
        }
        c.tls.flush().await?;
        c.until("message").await?;
        received += 1;
    }
    Ok(())
}

/// Aggregate rate of `sessions` clients bursting `n` messages in total at once.
async fn aggregate(
    addr: SocketAddr,
    ca: &std::path::Path,
    sessions: usize,
    n: usize,
) -> Result<f64, BoxError> {
    let mut clients = Vec::with_capacity(sessions);
    for i in 0..sessions {
        clients.push(Client::connect(addr, ca, &format!("user{i}"), "bench-pw").await?);
    }
    let per = n / sessions;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move { burst(&mut c, 0, per).await });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok((per * sessions) as f64 / started.elapsed().as_secs_f64())
}

struct Figures {
    p50: Duration,
    p99: Duration,
    rate: f64,
}

async fn measure(addr: SocketAddr, ca: &std::path::Path, n: usize) -> Result<Figures, BoxError> {
    let mut c = Client::connect(addr, ca, "alice", "alice-pw").await?;
    // Sequential round trips: latency.
    let rounds = n.min(500);
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let started = Instant::now();
        let m = c.message(i);
        c.send(&m).await?;
        c.until("message").await?;
        rtts.push(started.elapsed());
    }
    rtts.sort();
    // Pipelined burst with at most 64 in flight: throughput.
    let started = Instant::now();
    burst(&mut c, rounds, n).await?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    Ok(Figures {
        p50: rtts[rtts.len() / 2],
        p99: rtts[rtts.len() * 99 / 100],
        rate,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2000);
    let dir = TestDir::new("bench")?;
    let ca = TestCa::generate(dir.path())?;
    let mut opts = ProsodyOptions::default();
    opts.users
        .push(User::new("alice", "example.test", "alice-pw"));
    for i in 0..8 {
        opts.users
            .push(User::new(&format!("user{i}"), "example.test", "bench-pw"));
    }
    let prosody = Prosody::start(dir.path(), &ca, opts)?;
    let direct = prosody.direct_tls_addr().ok_or("no direct TLS port")?;

    let custos_dir = dir.join("custos");
    std::fs::create_dir_all(custos_dir.join("secrets"))?;
    let leaf = ca.leaf(&custos_dir, "example.test")?;
    let archive = section(
        "archive",
        [
            ("dir", path(&custos_dir.join("archive"))),
            ("master_key", path(&custos_dir.join("secrets/master.key"))),
            ("signing_key", path(&custos_dir.join("secrets/signing.key"))),
        ],
    );
    std::fs::write(custos_dir.join("keys.toml"), render(&archive))?;
    let out = run_custos(&["keys", "init"], Some(&custos_dir.join("keys.toml")))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    std::fs::write(
        custos_dir.join("rules.toml"),
        include_str!("../../../policy/examples/rules.toml")
            .replace("lexicons/insider.txt", "insider.txt"),
    )?;
    std::fs::write(custos_dir.join("insider.txt"), "falcon\nkestrel\nosprey\n")?;
    let mut config = section(
        "upstream",
        [
            ("address", Value::from(prosody.c2s_addr().to_string())),
            ("tls", Value::from("starttls")),
            ("ca", path(ca.cert_path())),
            ("server_name", Value::from("example.test")),
        ],
    );
    merge(&mut config, archive);
    merge(&mut config, section("policy", [("rules", "rules.toml")]));
    std::env::set_var("CUSTOS_LOG", "warn");
    let custos = Custos::start(
        &custos_dir,
        &[ListenerKind::Direct],
        &leaf.chain_path,
        &leaf.key_path,
        &config,
    )?;

    println!("{n} messages, one client to itself, 1 KiB-ish stanzas, Direct TLS");
    let base = measure(direct, ca.cert_path(), n).await?;
    println!(
        "prosody directly : round trip p50 {:>7.2?}  p99 {:>7.2?}   burst {:>7.0} msg/s",
        base.p50, base.p99, base.rate
    );
    let via = measure(custos.listener(0), ca.cert_path(), n).await?;
    println!(
        "through custos   : round trip p50 {:>7.2?}  p99 {:>7.2?}   burst {:>7.0} msg/s  (policy + archive fsync per message)",
        via.p50, via.p99, via.rate
    );
    let direct8 = aggregate(direct, ca.cert_path(), 8, n * 4).await?;
    let via8 = aggregate(custos.listener(0), ca.cert_path(), 8, n * 4).await?;
    println!("8 sessions at once: prosody directly {direct8:>7.0} msg/s, through custos {via8:>7.0} msg/s");
    Ok(())
}
