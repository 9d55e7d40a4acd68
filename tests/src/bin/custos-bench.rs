//! What Custos costs on the wire: message round-trip latency and throughput for one
//! client talking to itself through a real Prosody, directly and through Custos (with the
//! archive writing and fsyncing every message before forwarding it, and the demo rules).
//!
//! `cargo run --release -p custos-e2e --bin custos-bench -- [MESSAGES] [--sessions 1,8,64]
//! [--repeat N] [--rules FILE] [--web] [--index-niceness N]` (default 2000 messages per
//! session count, the demo rules; `--repeat` runs the round trips' pair and each session
//! count's pair that many times, interleaved, and adds their medians; `--web` serves the
//! review UI too, following the archive as it is written; `--index-niceness` sets
//! `[archive] index_niceness`).
//!
//! Prints, in one run, for one session: p50/p99 latency of up to 2,000 sequential round
//! trips; and for each session count: the aggregate rate of every session bursting at
//! once, directly and through Custos, and the CPU time per message of Custos and of the
//! Prosody behind it (from `/proc/PID/stat`, read once both have gone quiet after the
//! burst, so Custos's indexing in the background is counted), with the ratios to direct
//! Prosody, and how long Custos stayed busy after the burst (mostly its search index
//! catching up), and Prosody's read and write system calls per message (from
//! `/proc/PID/io`), and how many records Custos's log wrote per fsync (its
//! `custos_archive_batch_records` histogram on the admin listener). First of all, on a
//! Prosody and a Custos of their own that are then stopped: the memory a logged-in,
//! silent session holds in each.
//!
//! On a shared machine one pair says little: direct Prosody's own CPU per message has
//! moved by half and more between pairs of one sitting. `--repeat` interleaves pairs
//! and prints their medians.

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
        // A resource of its own, so sessions of one account do not replace each other.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.send(&format!("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench{n}</resource></bind></iq>"))
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

/// `sessions` clients, logged in.
async fn clients(
    addr: SocketAddr,
    ca: &std::path::Path,
    sessions: usize,
) -> Result<Vec<Client>, BoxError> {
    let mut clients = Vec::with_capacity(sessions);
    for i in 0..sessions {
        clients.push(Client::connect(addr, ca, &format!("user{i}"), "bench-pw").await?);
    }
    Ok(clients)
}

/// Aggregate rate of `clients` bursting `n` messages in total at once.
async fn aggregate(clients: Vec<Client>, n: usize) -> Result<f64, BoxError> {
    let per = n / clients.len().max(1);
    let total = per * clients.len();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move { burst(&mut c, 0, per).await });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Sequential round trips behind the latency figures, at most.
const ROUND_TRIPS: usize = 2000;

struct Figures {
    p50: Duration,
    p99: Duration,
    rate: f64,
}

async fn measure(addr: SocketAddr, ca: &std::path::Path, n: usize) -> Result<Figures, BoxError> {
    let mut c = Client::connect(addr, ca, "alice", "alice-pw").await?;
    // Sequential round trips: latency. At most 2,000 of them, so that the p99 is the
    // 20th slowest rather than the 5th, which one stall of the disk or the machine moves.
    let rounds = n.min(ROUND_TRIPS);
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

/// User plus system CPU time of a process so far, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Result<Duration, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11).ok_or("no utime")?.parse::<u64>()?
        + fields.get(12).ok_or("no stime")?.parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

/// Read and write system calls of a process so far, from `/proc/PID/io`.
fn syscalls(pid: u32) -> Result<(u64, u64), BoxError> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let field = |name: &str| -> Result<u64, BoxError> {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/io").into())
    };
    Ok((field("syscr:")?, field("syscw:")?))
}

/// Sessions held open for the idle-memory figure.
const IDLE_SESSIONS: usize = 256;

/// The growth of `pid`'s resident memory per session while `count` sessions are logged
/// in and silent, in KiB: for the first `count` on a fresh process, and for `count`
/// more beside them. The second figure is what one more session costs a process whose
/// heap already serves others; the first also carries what the process sets up once
/// (and what its index commits allocate meanwhile), which moves it by several KiB a
/// session from run to run.
async fn idle_memory(
    addr: SocketAddr,
    ca: &std::path::Path,
    pid: u32,
    count: usize,
) -> Result<(f64, f64), BoxError> {
    let mut held = Vec::with_capacity(2 * count);
    let mut growth = [0.0; 2];
    for g in &mut growth {
        let before = rss_kib(pid)?;
        for i in 0..count {
            held.push(Client::connect(addr, ca, &format!("user{}", i % 64), "bench-pw").await?);
        }
        // Let buffers the logins used settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        *g = rss_kib(pid)?.saturating_sub(before) as f64 / count as f64;
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((growth[0], growth[1]))
}

/// Waits until `pid` has gone quiet: less than 5 ms of CPU over a quarter of a second,
/// which with `/proc`'s 10 ms clock ticks means not one tick, looked at every 50 ms.
/// Returns when that quiet quarter began, or `None` after 30 s without one.
async fn settle(pid: u32) -> Result<Option<std::time::Instant>, BoxError> {
    const WINDOW: Duration = Duration::from_millis(250);
    const STEP: Duration = Duration::from_millis(50);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = std::collections::VecDeque::from([(std::time::Instant::now(), cpu_time(pid)?)]);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(STEP).await;
        let (at, cpu) = (std::time::Instant::now(), cpu_time(pid)?);
        seen.push_back((at, cpu));
        // Keep the newest sample at least a window old at the front.
        while seen.len() > 2 && at.duration_since(seen[1].0) >= WINDOW {
            seen.pop_front();
        }
        let (from, cpu_then) = seen[0];
        if at.duration_since(from) >= WINDOW && cpu.saturating_sub(cpu_then) < WINDOW / 50 {
            return Ok(Some(from));
        }
    }
    Ok(None)
}

/// Resident memory of `pid` from `/proc/PID/status`, in KiB.
fn rss_kib(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` once.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// One session count's pair of runs, directly and through Custos.
struct Pair {
    ratio: f64,
    /// Prosody's CPU per message behind Custos over its CPU per message directly.
    prosody_ratio: f64,
    /// Custos's CPU per message over Prosody's directly.
    custos_ratio: f64,
}

impl Pair {
    fn of(direct: &Run, via: &Run) -> Pair {
        let direct_cpu = direct.prosody_cpu.as_secs_f64().max(1e-9);
        Pair {
            ratio: via.rate / direct.rate,
            prosody_ratio: via.prosody_cpu.as_secs_f64() / direct_cpu,
            custos_ratio: via.custos_cpu.unwrap_or_default().as_secs_f64() / direct_cpu,
        }
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Args {
    messages: usize,
    sessions: Vec<usize>,
    rules: Option<std::path::PathBuf>,
    /// Serve the review UI as well.
    web: bool,
    /// Pairs of runs per session count.
    repeat: usize,
    /// `[archive] index_niceness` for Custos, when not the default.
    index_niceness: Option<i64>,
}

fn args() -> Result<Args, BoxError> {
    let mut a = Args {
        messages: 2000,
        sessions: vec![1, 8, 64],
        rules: None,
        web: false,
        repeat: 1,
        index_niceness: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--sessions" => {
                let list = it.next().ok_or("--sessions needs a list, like 1,8,64")?;
                a.sessions = list
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--sessions {list}: {e}"))?;
                if a.sessions.iter().any(|&n| n == 0 || n > 64) {
                    return Err("--sessions: each count between 1 and 64".into());
                }
            }
            "--rules" => a.rules = Some(it.next().ok_or("--rules needs a file")?.into()),
            "--web" => a.web = true,
            "--index-niceness" => {
                let n = it.next().ok_or("--index-niceness needs 0 to 19")?;
                a.index_niceness = Some(
                    n.parse()
                        .map_err(|e| format!("--index-niceness {n}: {e}"))?,
                );
            }
            "--repeat" => {
                let n = it.next().ok_or("--repeat needs a count")?;
                a.repeat = n.parse().map_err(|e| format!("--repeat {n}: {e}"))?;
                if !(1..=20).contains(&a.repeat) {
                    return Err("--repeat: between 1 and 20".into());
                }
            }
            n => a.messages = n.parse().map_err(|e| format!("messages {n:?}: {e}"))?,
        }
    }
    Ok(a)
}

/// One session count, directly or through Custos: rate and CPU per message.
struct Run {
    rate: f64,
    prosody_cpu: Duration,
    /// Prosody's read and write system calls per message.
    prosody_calls: (f64, f64),
    custos_cpu: Option<Duration>,
    /// From the end of the burst until Custos went quiet (mostly the search index
    /// catching up and committing); `None`: not quiet within 30 s.
    custos_busy_after: Option<Duration>,
    /// Records per write and fsync of Custos's log over the run (its group commit).
    records_per_write: Option<f64>,
}

/// The running sum and count of Custos's `custos_archive_batch_records` histogram,
/// from its admin listener's `/metrics`.
fn write_batches(admin: SocketAddr) -> Result<(f64, f64), BoxError> {
    let (status, body) = custos_e2e::net::http_get(admin, "/metrics")?;
    if status != 200 {
        return Err(format!("custos /metrics answered {status}").into());
    }
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("custos_archive_batch_records_sum"),
        value("custos_archive_batch_records_count"),
    ))
}

async fn run(
    addr: SocketAddr,
    ca: &std::path::Path,
    sessions: usize,
    n: usize,
    prosody: u32,
    custos: Option<(u32, SocketAddr)>,
) -> Result<Run, BoxError> {
    let admin = custos.map(|c| c.1);
    let custos = custos.map(|c| c.0);
    // Logins are not what is measured: connect first, then read the clocks.
    let logged_in = clients(addr, ca, sessions).await?;
    let p0 = cpu_time(prosody)?;
    let io0 = syscalls(prosody)?;
    let c0 = custos.map(cpu_time).transpose()?;
    let w0 = admin.map(write_batches).transpose()?;
    let rate = aggregate(logged_in, n).await?;
    let burst_end = std::time::Instant::now();
    // The CPU a message costs includes what it leaves to do after the burst (Custos
    // indexes and commits in the background): the clocks are read once both
    // processes have gone quiet.
    let custos_quiet = async {
        match custos {
            Some(pid) => Ok(settle(pid)
                .await?
                .map(|quiet| quiet.saturating_duration_since(burst_end))),
            None => Ok::<_, BoxError>(Some(Duration::ZERO)),
        }
    };
    let (prosody_quiet, custos_busy_after) = tokio::join!(settle(prosody), custos_quiet);
    prosody_quiet?;
    let custos_busy_after = custos_busy_after?;
    let per = |d: Duration| d / u32::try_from(n).unwrap_or(u32::MAX);
    let prosody_cpu = per(cpu_time(prosody)? - p0);
    let io1 = syscalls(prosody)?;
    let prosody_calls = (
        io1.0.saturating_sub(io0.0) as f64 / n as f64,
        io1.1.saturating_sub(io0.1) as f64 / n as f64,
    );
    let custos_cpu = match (custos, c0) {
        (Some(pid), Some(c0)) => Some(per(cpu_time(pid)? - c0)),
        _ => None,
    };
    let records_per_write = match (admin, w0) {
        (Some(admin), Some(w0)) => {
            let w1 = write_batches(admin)?;
            Some((w1.0 - w0.0) / (w1.1 - w0.1).max(1.0))
        }
        _ => None,
    };
    Ok(Run {
        rate,
        prosody_cpu,
        prosody_calls,
        custos_cpu,
        custos_busy_after,
        records_per_write,
    })
}

/// A Prosody and a Custos in front of it, both started fresh.
struct Servers {
    /// Stopped when dropped, before Prosody (fields drop in this order).
    _custos: Custos,
    prosody: Prosody,
    custos_pid: u32,
    /// Custos's admin listener (`/metrics`).
    admin: SocketAddr,
    direct: SocketAddr,
    via: SocketAddr,
    rules: std::path::PathBuf,
}

/// Starts a Prosody with the bench's users and a Custos before it, in `name` under `dir`.
fn start_servers(dir: &TestDir, ca: &TestCa, a: &Args, name: &str) -> Result<Servers, BoxError> {
    let mut opts = ProsodyOptions::default();
    opts.users
        .push(User::new("alice", "example.test", "alice-pw"));
    for i in 0..64 {
        opts.users
            .push(User::new(&format!("user{i}"), "example.test", "bench-pw"));
    }
    let prosody = Prosody::start(dir.path(), ca, opts)?;
    let direct = prosody.direct_tls_addr().ok_or("no direct TLS port")?;

    let custos_dir = dir.join(name);
    std::fs::create_dir_all(custos_dir.join("secrets"))?;
    let leaf = ca.leaf(&custos_dir, "example.test")?;
    let mut archive = section(
        "archive",
        [
            ("dir", path(&custos_dir.join("archive"))),
            ("master_key", path(&custos_dir.join("secrets/master.key"))),
            ("signing_key", path(&custos_dir.join("secrets/signing.key"))),
        ],
    );
    if let Some(n) = a.index_niceness {
        merge(
            &mut archive,
            section("archive", [("index_niceness", Value::from(n))]),
        );
    }
    std::fs::write(custos_dir.join("keys.toml"), render(&archive))?;
    let out = run_custos(&["keys", "init"], Some(&custos_dir.join("keys.toml")))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    let rules = match &a.rules {
        Some(file) => file.clone(),
        None => {
            std::fs::write(
                custos_dir.join("rules.toml"),
                include_str!("../../../policy/examples/rules.toml")
                    .replace("lexicons/insider.txt", "insider.txt"),
            )?;
            std::fs::write(custos_dir.join("insider.txt"), "falcon\nkestrel\nosprey\n")?;
            custos_dir.join("rules.toml")
        }
    };
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
    merge(&mut config, section("policy", [("rules", path(&rules))]));
    let admin = SocketAddr::from(([127, 0, 0, 1], custos_e2e::net::free_port()?));
    merge(
        &mut config,
        section("admin", [("bind", Value::from(admin.to_string()))]),
    );
    if a.web {
        let (web, _) = custos_e2e::rig::web_section(&custos_dir)?;
        config.insert("web".into(), Value::Table(web));
    }
    let custos = Custos::start(
        &custos_dir,
        &[ListenerKind::Direct],
        &leaf.chain_path,
        &leaf.key_path,
        &config,
    )?;
    let custos_pid = custos.pid().ok_or("custos has no pid")?;
    let via = custos.listener(0);
    Ok(Servers {
        _custos: custos,
        prosody,
        custos_pid,
        admin,
        direct,
        via,
        rules,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let a = args()?;
    let n = a.messages;
    let dir = TestDir::new("bench")?;
    let ca = TestCa::generate(dir.path())?;
    std::env::set_var("CUSTOS_LOG", "warn");
    // What a logged-in session that stays silent costs, on a fresh heap and beside as
    // many others, on servers of its own: Prosody's first (the sessions through Custos
    // grow its heap too, and sessions after them would reuse what they freed). The
    // figures after it are taken on fresh servers again: hundreds of sessions gone
    // leave Prosody collecting their garbage for thousands of messages after, a pause
    // of several milliseconds every few dozen, in the direct figures and behind Custos.
    let idle = start_servers(&dir, &ca, &a, "custos-idle")?;
    println!(
        "{n} messages per run, each client to itself, ~150-byte bodies, Direct TLS; rules {}; review UI {}",
        idle.rules.display(),
        if a.web { "following" } else { "off" }
    );
    let idle_direct = idle_memory(
        idle.direct,
        ca.cert_path(),
        idle.prosody.pid(),
        IDLE_SESSIONS,
    )
    .await?;
    let idle_via = idle_memory(idle.via, ca.cert_path(), idle.custos_pid, IDLE_SESSIONS).await?;
    println!(
        "idle sessions ({IDLE_SESSIONS}, logged in, silent): custos {:.1} KiB each, {:.1} KiB each for {IDLE_SESSIONS} more; prosody directly {:.1} and {:.1} KiB each",
        idle_via.0, idle_via.1, idle_direct.0, idle_direct.1
    );
    drop(idle);
    let Servers {
        prosody,
        _custos,
        custos_pid,
        admin,
        direct,
        via: via_addr,
        ..
    } = start_servers(&dir, &ca, &a, "custos")?;
    // Round trips and one session's burst, directly then through Custos, `--repeat`
    // times interleaved: one run's p99 is the 20th slowest of 2,000 and moves by half.
    let mut added = Vec::with_capacity(a.repeat);
    for _ in 0..a.repeat {
        let base = measure(direct, ca.cert_path(), n).await?;
        let via = measure(via_addr, ca.cert_path(), n).await?;
        println!(
            "one session, round trip: prosody directly p50 {:>7.2?} p99 {:>7.2?}; through custos p50 {:>7.2?} p99 {:>7.2?} (+{:.2?} at p50, +{:.2?} at p99)",
            base.p50,
            base.p99,
            via.p50,
            via.p99,
            via.p50.saturating_sub(base.p50),
            via.p99.saturating_sub(base.p99)
        );
        println!(
            "one session, pipelined burst (64 in flight): prosody directly {:.0} msg/s, through custos {:.0} msg/s ({:.2}x)",
            base.rate,
            via.rate,
            via.rate / base.rate
        );
        added.push((
            via.p50.as_secs_f64() - base.p50.as_secs_f64(),
            via.p99.as_secs_f64() - base.p99.as_secs_f64(),
        ));
    }
    if added.len() > 1 {
        println!(
            "one session, round trip, median of {} pairs: custos adds {:.2} ms at p50, {:.2} ms at p99",
            added.len(),
            median(added.iter().map(|a| a.0)) * 1e3,
            median(added.iter().map(|a| a.1)) * 1e3,
        );
    }
    println!(
        "{:>8} {:>12} {:>12} {:>7} {:>14} {:>14} {:>12} {:>9} {:>9} {:>11} {:>17} {:>17} {:>9}",
        "sessions",
        "direct msg/s",
        "custos msg/s",
        "ratio",
        "prosody cpu/m",
        "behind custos",
        "custos cpu/m",
        "p. ratio",
        "c./direct",
        "busy after",
        "p. r/w directly",
        "p. r/w behind",
        "rec/write"
    );
    for &sessions in &a.sessions {
        let mut pairs = Vec::with_capacity(a.repeat);
        for _ in 0..a.repeat {
            let d = run(direct, ca.cert_path(), sessions, n, prosody.pid(), None).await?;
            let v = run(
                via_addr,
                ca.cert_path(),
                sessions,
                n,
                prosody.pid(),
                Some((custos_pid, admin)),
            )
            .await?;
            let pair = Pair::of(&d, &v);
            println!(
                "{:>8} {:>12.0} {:>12.0} {:>7.2} {:>14.1?} {:>14.1?} {:>12.1?} {:>9.2} {:>9.2} {:>11} {:>17} {:>17} {:>9.1}",
                sessions,
                d.rate,
                v.rate,
                pair.ratio,
                d.prosody_cpu,
                v.prosody_cpu,
                v.custos_cpu.unwrap_or_default(),
                pair.prosody_ratio,
                pair.custos_ratio,
                v.custos_busy_after
                    .map_or_else(|| "> 30 s".to_string(), |d| format!("{:.2?}", d)),
                format!("{:.2} / {:.2}", d.prosody_calls.0, d.prosody_calls.1),
                format!("{:.2} / {:.2}", v.prosody_calls.0, v.prosody_calls.1),
                v.records_per_write.unwrap_or_default(),
            );
            pairs.push(pair);
        }
        if pairs.len() > 1 {
            let med = |f: fn(&Pair) -> f64| median(pairs.iter().map(f));
            println!(
                "{:>8} median of {} pairs: ratio {:.2}, prosody behind custos {:.2}x its cpu/m directly, custos cpu/m {:.2}x direct prosody's",
                sessions,
                pairs.len(),
                med(|p| p.ratio),
                med(|p| p.prosody_ratio),
                med(|p| p.custos_ratio),
            );
        }
    }
    Ok(())
}
