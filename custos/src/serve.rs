//! `custos serve`: starts the enabled parts and stops them on SIGTERM / SIGINT.
//!
//! ```text
//!  [archive] ─▶ Archive::open (recovery, writer, indexer)
//!  [policy]  ─▶ PolicyHandle (+ file watcher, SIGHUP reload)
//!  [[listener]] + [upstream] ─▶ Proxy with Pipeline(policy → archive → forward)
//!  SIGTERM ─▶ proxy drains ─▶ archive closes (final checkpoint)
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use custos_archive::retention::RetentionPolicy;
use custos_archive::{Archive, Timestamp};
use custos_policy::{PolicyHandle, Watcher};
use custos_proxy::alerts::AlertSender;
use custos_proxy::pipeline::{OnArchiveFailure, Pipeline};
use custos_proxy::Proxy;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::archive_cmds;
use crate::config::{self, OnFailure};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    init_tracing();
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(cfg: config::Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    if cfg.proxy.is_none() {
        anyhow::bail!(
            "{}: nothing to serve: no [[listener]] configured",
            cfg.file.display()
        );
    }
    // Metrics and health first: the process answers /healthz while the rest starts.
    let readiness = crate::admin::Readiness {
        listening: Arc::default(),
        archive: Arc::default(),
        archive_configured: cfg.archive.is_some(),
        upstream: cfg.proxy.as_ref().map(|p| p.upstream.address.clone()),
    };
    let admin = match cfg.admin {
        Some(bind) => Some(
            crate::admin::start(
                bind,
                crate::admin::install_recorder()?,
                readiness.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };

    let mut object_store = None;
    let archive = match &cfg.archive {
        Some(a) => {
            if let (Some(remote), Some(s)) =
                (crate::object_store_cmds::connect(a)?, &a.object_store)
            {
                if let Err(e) = remote.check_bucket() {
                    anyhow::bail!("[archive.object_store]: {e}");
                }
                object_store = Some((remote, s.upload_every));
            }
            let master = archive_cmds::master_key(a)?;
            let signing = custos_archive::load_signing_key(&a.signing_key)
                .with_context(|| format!("reading the signing key {}", a.signing_key.display()))?;
            let archive_config = archive_cmds::archive_config(a, master, signing);
            if a.witness.is_none() {
                warn!("no [archive] witness configured: records cut from the end of the log cannot be detected by verify");
            }
            let archive = Archive::open(archive_config)
                .with_context(|| format!("opening the archive in {}", a.dir.display()))?;
            info!(dir = %a.dir.display(), "archive open");
            if let Some(node) = &a.node {
                // The chain says whose it is: verify checks this against the folder the
                // chain is kept in, so a chain cannot pass as another node's.
                archive
                    .append(custos_archive::NewRecord::Event(
                        custos_archive::EventRecord::Audit {
                            actor: "custos".into(),
                            action: crate::nodes::NODE_START.into(),
                            detail: serde_json::json!({ "node": node }).to_string(),
                        },
                    ))
                    .await
                    .context("recording this node's start in its chain")?;
                info!(node = %node, "node start recorded");
            }
            let _ = readiness.archive.set(archive.clone());
            Some(archive)
        }
        None => {
            warn!("no [archive] configured: messages are relayed but not archived");
            None
        }
    };

    let (policy, watcher) = match &cfg.policy {
        Some(p) => {
            let handle = PolicyHandle::open(&p.rules).map_err(|e| anyhow::anyhow!("{e}"))?;
            info!(summary = %handle.current().summary(), "policy loaded");
            let watcher = Watcher::spawn(handle.clone(), Duration::from_secs(1), |result| match result {
                Ok(r) => {
                    metrics::counter!("custos_policy_reloads_total", "result" => "ok").increment(1);
                    info!(summary = %r.summary, "policy reloaded")
                }
                Err(err) => {
                    metrics::counter!("custos_policy_reloads_total", "result" => "invalid").increment(1);
                    error!(cause = %err, "policy file changed but is invalid; previous rules stay in force")
                }
            })
            .context("starting the policy file watcher")?;
            (Some(handle), Some(watcher))
        }
        None => (None, None),
    };
    spawn_signal_handler(shutdown.clone(), policy.clone())?;

    let alerts = match &policy {
        Some(_) => Some(AlertSender::spawn().context("starting the alert sender")?),
        None => None,
    };
    let on_failure = match cfg.archive.as_ref().map(|a| a.on_failure) {
        Some(OnFailure::Deliver) => OnArchiveFailure::Deliver,
        _ => OnArchiveFailure::Block,
    };
    let retention = cfg.retention.clone();
    let mut pipeline = Pipeline::new(policy, archive.clone(), on_failure, alerts).with_retention(
        retention
            .as_ref()
            .map(|r| r.policy.clone())
            .unwrap_or_else(RetentionPolicy::keep_forever),
    );
    if let Some(files) = &cfg.files {
        info!(sources = ?files.sources.iter().map(|s| s.as_str()).collect::<Vec<_>>(), "shared files from these upload services are archived");
        pipeline = pipeline.with_files(
            custos_proxy::files::Files::new(files.clone()).context("starting the file fetcher")?,
        );
    }
    let pipeline = Arc::new(pipeline);
    let expiry = match (&archive, &retention) {
        (Some(archive), Some(r)) => Some(tokio::spawn(expiry_loop(
            archive.clone(),
            r.policy.clone(),
            r.run_every,
            shutdown.clone(),
        ))),
        (Some(_), None) => {
            info!("no [retention] configured: records are kept forever");
            None
        }
        _ => None,
    };

    // Other nodes' chains in the shared bucket: found, and their indexes kept current,
    // for the web UI's search.
    let peers = custos_web_ui::Peers::default();
    let peer_refresh = match (&cfg.archive, &object_store) {
        (Some(a), Some((_, every))) => Some(tokio::spawn(peer_index_loop(
            a.clone(),
            archive_cmds::master_key(a)?,
            peers.clone(),
            *every,
            shutdown.clone(),
        ))),
        _ => None,
    };

    let journal_health = custos_web_ui::JournalHealth::default();
    let journal = match (&archive, &cfg.journal) {
        (Some(archive), Some(j)) => Some(tokio::spawn(crate::journal::journal_loop(
            archive.clone(),
            j.clone(),
            journal_health.clone(),
            shutdown.clone(),
        ))),
        _ => None,
    };

    let object_sync = match (&archive, object_store) {
        (Some(archive), Some((remote, every))) => Some(tokio::spawn(object_sync_loop(
            archive.clone(),
            remote,
            retention
                .as_ref()
                .map(|r| r.policy.clone())
                .unwrap_or_else(RetentionPolicy::keep_forever),
            every,
            shutdown.clone(),
        ))),
        _ => None,
    };

    let web = match (&cfg.web, &archive) {
        (Some(w), Some(archive)) => {
            let mut web_config = custos_web_ui::WebConfig::new(w.bind, w.users.clone());
            if let Some(rate) = w.sample_rate {
                web_config.sample_rate = rate;
            }
            if let Some(ttl) = w.session_ttl {
                web_config.session_ttl = ttl;
            }
            web_config.tls.clone_from(&w.tls);
            web_config.secure_cookies = w.secure_cookies;
            web_config.retention = retention.as_ref().map(|r| r.policy.clone());
            web_config.peers = peers.clone();
            web_config.journal = journal_health.clone();
            if let Some(a) = &cfg.archive {
                web_config.node.clone_from(&a.node);
                web_config.lexicons.clone_from(&a.lexicons);
                web_config.export = Some(custos_web_ui::ExportKeys {
                    archive_dir: a.dir.clone(),
                    master_key: archive_cmds::master_key(a)?,
                    signing_key: custos_archive::load_signing_key(&a.signing_key)?,
                });
            }
            // Configuration mistakes (the users file, the address) stop the start here;
            // reading the archive for the review state waits until XMPP is served.
            let prepared = custos_web_ui::prepare(web_config)
                .await
                .context("starting the review web UI")?;
            Some((prepared, archive.clone(), w.tls.is_some()))
        }
        _ => None,
    };

    let proxy = match cfg.proxy {
        Some(proxy_config) => {
            let proxy = Proxy::bind(proxy_config).await?;
            for addr in proxy.local_addrs() {
                // A line scripts and tests can wait for.
                info!(%addr, "proxy listening");
            }
            readiness
                .listening
                .store(true, std::sync::atomic::Ordering::Release);
            Some(proxy)
        }
        None => None,
    };
    let web = web.map(|(prepared, archive, https)| {
        let stop = shutdown.clone();
        tokio::spawn(serve_web(prepared, archive, https, stop))
    });
    match proxy {
        Some(proxy) => proxy.run(pipeline.clone(), shutdown.clone()).await,
        None => shutdown.cancelled().await,
    }
    if let Some(web) = web {
        match web.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => error!(cause = %err, "web UI failed"),
            Err(err) => error!(cause = %err, "web UI task failed"),
        }
    }

    if let Some(w) = watcher {
        w.stop();
    }
    if let Some(e) = expiry {
        let _ = e.await;
    }
    if let Some(s) = object_sync {
        let _ = s.await;
    }
    if let Some(p) = peer_refresh {
        let _ = p.await;
    }
    if let Some(a) = admin {
        let _ = a.await;
    }
    if let Some(j) = journal {
        let _ = j.await;
    }
    drop(pipeline);
    if let Some(archive) = archive {
        archive.close().await.context("closing the archive")?;
        info!("archive closed");
    }
    Ok(())
}

/// Loads the review UI's state from the archive, then serves it until shutdown; XMPP is
/// served meanwhile. `custos_web_ui_ready` is 1 while it serves,
/// `custos_web_ui_state_whole` 1 while what it shows is the whole state.
async fn serve_web(
    prepared: custos_web_ui::PreparedWeb,
    archive: Archive,
    https: bool,
    stop: CancellationToken,
) -> Result<(), custos_web_ui::WebError> {
    let addr = prepared.local_addr();
    let started = std::time::Instant::now();
    metrics::gauge!("custos_web_ui_ready").set(0.0);
    let bound = match prepared.load(archive).await {
        Ok(bound) => bound,
        Err(err) => {
            error!(cause = %err, %addr, "the review web UI could not read the archive and is not served; XMPP is");
            return Err(err);
        }
    };
    info!(
        %addr,
        https,
        seconds = started.elapsed().as_secs_f64(),
        "web UI listening"
    );
    metrics::gauge!("custos_web_ui_ready").set(1.0);
    // Whether what pages show is the whole state: 0 while it is built from the log
    // (a start with much to read) or after a page of its files was found changed.
    let whole = bound.whole_watch();
    let watching = stop.clone();
    let watcher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = watching.cancelled() => break,
                _ = tick.tick() => {
                    let whole = whole();
                    metrics::gauge!("custos_web_ui_state_whole").set(if whole { 1.0 } else { 0.0 });
                }
            }
        }
    });
    let served = bound.run(async move { stop.cancelled().await }).await;
    watcher.abort();
    metrics::gauge!("custos_web_ui_ready").set(0.0);
    served
}

/// Runs expiry every `every` (first a minute after start, so a restart loop cannot
/// shred in a burst) until shutdown.
async fn expiry_loop(
    archive: Archive,
    policy: RetentionPolicy,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut wait = every.min(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = every;
        match archive
            .run_expiry(&policy, Timestamp::now(), "custos:retention", false)
            .await
        {
            Ok(r) if r.shredded.is_empty() && r.completed.is_empty() => {}
            Ok(r) => info!(
                shredded = r.shredded.len(),
                completed = r.completed.len(),
                segments = ?r.shredded.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                "retention: expired segments shredded"
            ),
            Err(err) => error!(cause = %err, "retention run failed; retried at the next interval"),
        }
    }
}

/// Syncs sealed segments to the bucket every `every` until shutdown.
/// Every `every`: lists the other nodes' chains in the bucket, brings each one's local
/// index up to what is stored, and hands the list to the web UI.
async fn peer_index_loop(
    a: config::ArchiveSettings,
    master: custos_archive::MasterKey,
    peers: custos_web_ui::Peers,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut wait = every.min(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = every;
        let (a2, key) = (a.clone(), master.clone());
        let found = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<custos_web_ui::PeerChain>> {
            let mut out = Vec::new();
            for chain in crate::nodes::chains(&a2)?.into_iter().filter(|c| !c.own) {
                match custos_archive::update_index(&chain.dir, &key, |_, _| {}) {
                    Ok(_) | Err(custos_archive::ReindexError::Locked { .. }) => {}
                    Err(e) => warn!(node = ?chain.node, cause = %e, "another node's index cannot be brought up to date"),
                }
                out.push(custos_web_ui::PeerChain {
                    node: chain.node,
                    dir: chain.dir,
                });
            }
            Ok(out)
        })
        .await;
        match found {
            Ok(Ok(list)) => {
                let mut current = peers.write().unwrap_or_else(|p| p.into_inner());
                if *current != list {
                    info!(nodes = ?list.iter().map(|p| p.node.clone()).collect::<Vec<_>>(), "other nodes' chains found in the bucket");
                    *current = list;
                }
            }
            Ok(Err(e)) => warn!(cause = %e, "other nodes' chains cannot be listed"),
            Err(e) => error!(cause = %e, "the other nodes' index refresh failed"),
        }
    }
}

async fn object_sync_loop(
    archive: Archive,
    remote: custos_archive::bucket::Remote,
    policy: RetentionPolicy,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut wait = every.min(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = every;
        match archive
            .sync_objects(&remote, &policy, Timestamp::now())
            .await
        {
            Ok(r) => {
                if !(r.stored.is_empty()
                    && r.keys_deleted.is_empty()
                    && r.holds_set.is_empty()
                    && r.holds_cleared.is_empty())
                {
                    info!(
                        stored = ?r.stored.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                        dropped_local = r.dropped_local.len(),
                        legal_holds_set = r.holds_set.len(),
                        legal_holds_cleared = r.holds_cleared.len(),
                        key_objects_deleted = r.keys_deleted.len(),
                        "object store: synced"
                    );
                }
                for (segment, why) in &r.keys_pending {
                    warn!(segment, cause = %why, "object store: the key object of a shredded segment cannot be deleted yet");
                }
                match &r.index {
                    Some(Ok(u)) if u.files > 0 || u.deleted > 0 => {
                        info!(
                            files = u.files,
                            bytes = u.bytes,
                            deleted = u.deleted,
                            "object store: index copy updated"
                        );
                    }
                    Some(Err(why)) => {
                        warn!(cause = %why, "object store: the index copy was not updated; other nodes index from the segments meanwhile");
                    }
                    _ => {}
                }
            }
            Err(err) => {
                error!(cause = %err, "object store sync failed; retried at the next interval")
            }
        }
    }
}

fn spawn_signal_handler(
    shutdown: CancellationToken,
    policy: Option<PolicyHandle>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => match &policy {
                    Some(handle) => match handle.reload() {
                        Ok(r) => {
                            metrics::counter!("custos_policy_reloads_total", "result" => "ok").increment(1);
                            info!(summary = %r.summary, "SIGHUP: policy reloaded")
                        }
                        Err(err) => {
                            metrics::counter!("custos_policy_reloads_total", "result" => "invalid").increment(1);
                            error!(cause = %err, "SIGHUP: policy file invalid; previous rules stay in force")
                        }
                    },
                    None => info!("SIGHUP: no policy configured; nothing to reload"),
                },
            }
        }
        shutdown.cancel();
    });
    Ok(())
}

/// Logs to standard error: `CUSTOS_LOG` filters (default `info`); with
/// `CUSTOS_LOG_FORMAT=json` each event is one JSON object per line (for journald or a log
/// shipper), otherwise readable text.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CUSTOS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CUSTOS_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
