//! `custos hold …`, `custos retention run` and `custos erasure report`: thin shells over
//! the archive crate's retention module (docs/retention.md).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use custos_archive::retention::{
    Decision, Hold, HoldSpec, Keep, Release, RetentionPolicy, HOLD_CHANGE, HOLD_PLACE, HOLD_RELEASE,
};
use custos_archive::{
    Archive, ArchiveReader, AuditSubmitted, EventRecord, ExpiryPlan, MasterKey, SigningKey,
    Timestamp,
};

use crate::archive_cmds;
use crate::config::{self, ArchiveSettings};
use crate::export_cmds::{cli_actor, time};

struct Opened {
    settings: ArchiveSettings,
    master: MasterKey,
    signing: SigningKey,
    retention: Option<RetentionPolicy>,
}

fn open(config_path: &Path) -> anyhow::Result<Opened> {
    let cfg = config::load_or_fail(config_path)?;
    let Some(settings) = cfg.archive else {
        bail!("{}: no [archive] section", config_path.display());
    };
    crate::object_store_cmds::connect(&settings)?;
    let master = archive_cmds::master_key(&settings)?;
    let signing = custos_archive::load_signing_key(&settings.signing_key)
        .with_context(|| format!("reading the signing key {}", settings.signing_key.display()))?;
    Ok(Opened {
        settings,
        master,
        signing,
        retention: cfg.retention.map(|r| r.policy),
    })
}

/// Records an audit event (directly, or through a running writer's inbox) and returns
/// its seq once it is in the chain.
fn record(o: &Opened, actor: String, action: &str, detail: String) -> anyhow::Result<u64> {
    let event = EventRecord::Audit {
        actor: actor.clone(),
        action: action.to_owned(),
        detail: detail.clone(),
    };
    let cfg = crate::archive_cmds::archive_config(&o.settings, o.master.clone(), o.signing.clone());
    match custos_archive::submit_audit_in(cfg, event)? {
        AuditSubmitted::Appended { seq } => Ok(seq.0),
        AuditSubmitted::Queued { path } => {
            // The running writer appends it within about a second; wait to confirm.
            let reader = ArchiveReader::open(&o.settings.dir, &o.master)?;
            let from = reader.chain_end()?.saturating_sub(64).max(1);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let mut found = None;
                reader.scan(from, |e| {
                    if let Some(rec) = &e.record {
                        if let custos_archive::NewRecord::Event(EventRecord::Audit {
                            actor: a,
                            action: x,
                            detail: d,
                        }) = &rec.content
                        {
                            if *a == actor && x == action && *d == detail {
                                found = Some(e.seq);
                            }
                        }
                    }
                    Ok::<(), custos_archive::ReadError>(())
                })?;
                if let Some(seq) = found {
                    return Ok(seq);
                }
                if Instant::now() > deadline {
                    bail!(
                        "handed to the running server in {} but not yet in the archive after 15 s; check the server's log",
                        path.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

pub fn hold_add(
    config: &Path,
    matter: &str,
    jids: &[String],
    query: Option<&str>,
    (since, until): (Option<&str>, Option<&str>),
    actor: Option<String>,
    change: bool,
) -> anyhow::Result<ExitCode> {
    let o = open(config)?;
    // A hold keeps the terms a lexicon had when it was placed: editing the lexicon
    // later does not silently change what is held.
    let query = query
        .map(|q| o.settings.lexicons.expand(q))
        .transpose()
        .map_err(|e| anyhow::anyhow!("hold {matter:?}: query: {e}"))?;
    let spec = HoldSpec::new(
        matter,
        jids,
        query.as_deref(),
        time(since, "--since")?,
        time(until, "--until")?,
    )
    .map_err(|e| anyhow::anyhow!("hold {matter:?}: {e}"))?;
    let reader = ArchiveReader::open(&o.settings.dir, &o.master)?;
    let existing = reader.holds()?;
    let active = existing.get(&spec.matter).is_some_and(|h| h.active);
    let act = match (active, change) {
        (false, false) => HOLD_PLACE,
        (true, true) => HOLD_CHANGE,
        (true, false) => bail!(
            "hold {:?} is active; pass --change to replace its criteria, or choose another matter name",
            spec.matter
        ),
        (false, true) => bail!("no active hold {:?} to change", spec.matter),
    };
    let detail = serde_json::to_string(&spec)?;
    let seq = record(&o, actor.unwrap_or_else(cli_actor), act, detail)?;
    println!(
        "hold {:?} {} (record seq {seq}): {}",
        spec.matter,
        if act == HOLD_CHANGE {
            "changed"
        } else {
            "placed"
        },
        describe(&spec)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn hold_release(
    config: &Path,
    matter: &str,
    actor: Option<String>,
) -> anyhow::Result<ExitCode> {
    let o = open(config)?;
    let reader = ArchiveReader::open(&o.settings.dir, &o.master)?;
    match reader.holds()?.get(matter) {
        Some(h) if h.active => {}
        Some(_) => bail!("hold {matter:?} is already released"),
        None => bail!("no hold {matter:?} (see `custos hold list`)"),
    }
    let detail = serde_json::to_string(&Release {
        matter: matter.to_owned(),
    })?;
    let seq = record(&o, actor.unwrap_or_else(cli_actor), HOLD_RELEASE, detail)?;
    println!("hold {matter:?} released (record seq {seq})");
    Ok(ExitCode::SUCCESS)
}

pub fn hold_list(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let o = open(config)?;
    let reader = ArchiveReader::open(&o.settings.dir, &o.master)?;
    let holds = reader.holds()?;
    // Other nodes' holds bind this node's expiry too: listed with their node's name.
    let others = match custos_archive::bucket::registered(&o.settings.dir) {
        Some(remote) => custos_archive::bucket::peer_holds(&o.settings.dir, &remote, &o.master)
            .map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    for h in holds.all().chain(&others) {
        if json {
            println!("{}", serde_json::to_string(h)?);
        } else {
            println!("{}", hold_line(h));
        }
    }
    if !holds.unreadable.is_empty() {
        eprintln!(
            "warning: hold record(s) at seq {:?} cannot be read; expiry stops until they are",
            holds.unreadable
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(spec: &HoldSpec) -> String {
    let mut parts = Vec::new();
    if !spec.jids.is_empty() {
        parts.push(format!("custodians {}", spec.jids.join(", ")));
    }
    if let Some(q) = &spec.query {
        parts.push(format!("query {q:?}"));
    }
    if let Some(s) = spec.since {
        parts.push(format!("since {}", Timestamp(s)));
    }
    if let Some(u) = spec.until {
        parts.push(format!("until {}", Timestamp(u)));
    }
    parts.join(", ")
}

fn hold_line(h: &Hold) -> String {
    let history: Vec<String> = h
        .history
        .iter()
        .map(|a| format!("{} by {} at {} (seq {})", a.act, a.actor, a.time, a.seq))
        .collect();
    format!(
        "{:?} {}: {} — {}",
        h.spec.matter,
        if h.active { "ACTIVE" } else { "released" },
        describe(&h.spec),
        history.join("; ")
    )
}

pub fn run(config: &Path, dry_run: bool) -> anyhow::Result<ExitCode> {
    let o = open(config)?;
    let Some(policy) = o.retention.clone() else {
        bail!(
            "{}: no [retention] section: nothing expires (add `[retention] default = \"6y\"`)",
            config.display()
        );
    };
    let now = Timestamp::now();
    if dry_run {
        let reader = ArchiveReader::open(&o.settings.dir, &o.master)?;
        let plan = reader.expiry_plan(&policy, now)?;
        print_plan(&plan, true);
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = archive_cmds::archive_config(&o.settings, o.master.clone(), o.signing.clone());
    let archive = match Archive::open(cfg) {
        Ok(a) => a,
        Err(custos_archive::OpenError::Locked { .. }) => bail!(
            "the archive is being served; `serve` runs expiry itself every [retention] run_every (use --dry-run to preview)"
        ),
        Err(e) => return Err(e).context("opening the archive"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(archive.run_expiry(&policy, now, &cli_actor(), false));
    let closed = runtime.block_on(archive.close());
    let report = result?;
    closed.context("closing the archive")?;
    print_plan(&report.plan, false);
    for segment in &report.completed {
        println!("completed the interrupted shred of segment {segment}");
    }
    for (segment, seq) in &report.shredded {
        println!("shredded segment {segment} (shred record seq {seq})");
    }
    println!(
        "{} segment(s) shredded, {} interrupted shred(s) completed",
        report.shredded.len(),
        report.completed.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_plan(plan: &ExpiryPlan, dry_run: bool) {
    let (mut due, mut due_bytes, mut held, mut kept) = (0, 0u64, 0, 0);
    for s in &plan.segments {
        let f = &s.facts;
        let what = match &s.decision {
            Decision::Shred {
                class,
                span,
                newest,
                due: d,
            } => {
                due += 1;
                due_bytes += s.bytes;
                format!(
                    "{}: class {class} ({span}), newest record {newest}, due {d}",
                    if dry_run { "would shred" } else { "to shred" }
                )
            }
            Decision::Keep(k @ Keep::Held(_)) => {
                held += 1;
                format!("kept: {k}")
            }
            Decision::Keep(k) => {
                kept += 1;
                format!("kept: {k}")
            }
        };
        println!(
            "segment {} (seq {}..={}, {} record(s), {} bytes): {what}",
            f.segment, f.first_seq, f.last_seq, f.records, s.bytes
        );
    }
    for s in plan.shredded.iter().filter(|s| s.key_present) {
        println!(
            "segment {}: shred recorded at seq {} but its key is still there (interrupted); {}",
            s.segment,
            s.record_seq,
            if dry_run {
                "a run completes it"
            } else {
                "completing it"
            }
        );
    }
    let active: Vec<&str> = plan
        .holds
        .iter()
        .filter(|h| h.active)
        .map(|h| h.spec.matter.as_str())
        .collect();
    println!(
        "{due} segment(s) due ({due_bytes} bytes), {held} kept by holds, {kept} kept by retention; {} already shredded; active holds: {}",
        plan.shredded.len(),
        if active.is_empty() {
            "none".to_owned()
        } else {
            active.join(", ")
        }
    );
    if !plan.unreadable_holds.is_empty() {
        println!(
            "hold record(s) at seq {:?} cannot be read: nothing is shredded until they are",
            plan.unreadable_holds
        );
    }
}

pub fn erasure_report(
    config: &Path,
    jid: &str,
    json: bool,
    actor: Option<String>,
) -> anyhow::Result<ExitCode> {
    let o = open(config)?;
    let policy = o
        .retention
        .clone()
        .unwrap_or_else(RetentionPolicy::keep_forever);
    let reader = ArchiveReader::open(&o.settings.dir, &o.master)?;
    let report = reader.erasure_report(jid, &policy, Timestamp::now())?;
    let summary = serde_json::json!({
        "jid": report.jid,
        "records": report.records,
        "groups": report.groups.iter().map(|g| serde_json::json!({
            "class": g.class,
            "holds": g.holds,
            "records": g.records,
            "erasable_from": g.erasable_from.map(|t| t.to_string()),
        })).collect::<Vec<_>>(),
    });
    let seq = record(
        &o,
        actor.unwrap_or_else(cli_actor),
        "erasure.report",
        summary.to_string(),
    )?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "erasure report for {} at {}: {} record(s){}",
            report.jid,
            report.generated,
            report.records,
            if o.retention.is_none() {
                " (no [retention] section: everything is kept forever)"
            } else {
                ""
            }
        );
        for g in &report.groups {
            println!(
                "  class {}{}: {} record(s) ({} message(s)), {} .. {}; erasable from {}: {}",
                g.class,
                if g.holds.is_empty() {
                    String::new()
                } else {
                    format!(", held by {}", g.holds.join(", "))
                },
                g.records,
                g.messages,
                g.oldest,
                g.newest,
                match (&g.erasable_from, g.holds.is_empty()) {
                    (_, false) => "after the holds are released".to_owned(),
                    (Some(d), true) => d.to_string(),
                    (None, true) => "never under this configuration".to_owned(),
                },
                g.why
            );
        }
        println!("recorded as audit record seq {seq}");
    }
    Ok(ExitCode::SUCCESS)
}
