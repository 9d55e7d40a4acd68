//! `custos export` and `custos verify-export`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use custos_archive::{ExportRequest, NewRecord, Timestamp};

use crate::archive_cmds::{self, progress};

/// Who ran a command, for the audit trail: the operating-system account.
pub(crate) fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", nix_uid()));
    format!("cli:{user}")
}

fn nix_uid() -> u32 {
    // /proc/self/status has the real uid on Linux; avoids unsafe libc calls.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

pub(crate) fn time(value: Option<&str>, flag: &str) -> anyhow::Result<Option<Timestamp>> {
    value
        .map(|v| {
            Timestamp::parse(v).map_err(|_| {
                anyhow::anyhow!("{flag} {v:?}: expected YYYY-MM-DD or an RFC 3339 time")
            })
        })
        .transpose()
}

/// What every export starts from: the archive's settings and keys, and the selection.
fn setup(
    config: &Path,
    query: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
) -> anyhow::Result<(
    crate::config::ArchiveSettings,
    custos_archive::MasterKey,
    custos_archive::SigningKey,
    ExportRequest,
)> {
    let a = archive_cmds::settings(config)?;
    let master = archive_cmds::master_key(&a)?;
    let signing = custos_archive::load_signing_key(&a.signing_key)
        .with_context(|| format!("reading the signing key {}", a.signing_key.display()))?;
    // A lexicon is written out: the manifest names the query that ran, and an auditor
    // checks it without this configuration.
    let query = query
        .map(|q| a.lexicons.expand(q))
        .transpose()
        .map_err(|e| anyhow::anyhow!("bad query: {e}"))?;
    let request = ExportRequest {
        query,
        since: time(since, "--since")?,
        until: time(until, "--until")?,
    };
    Ok((a, master, signing, request))
}

pub fn export(
    config: &Path,
    out: &Path,
    query: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    scan: bool,
) -> anyhow::Result<ExitCode> {
    let (a, master, signing, request) = setup(config, query, since, until)?;
    let chains = crate::nodes::chains(&a)?;
    if chains.len() > 1 {
        return export_nodes(&a, &chains, &master, &signing, out, &request, scan);
    }
    let records = crate::nodes::own_chain_for_records(&a, &master, &signing)?;
    let chain = chains.first().map_or(a.dir.as_path(), |c| c.dir.as_path());
    let options = custos_archive::ExportOptions {
        scan,
        ..Default::default()
    };
    let summary = custos_archive::export_with(
        chain,
        &master,
        &signing,
        out,
        &request,
        &options,
        progress("exporting"),
    )?;
    // The export is itself evidence: record who took what.
    if let NewRecord::Event(event) = summary.audit_record(&cli_actor()) {
        record_audit(&a, &records, &master, &signing, event)
            .context("recording the export in the audit trail")?;
    }
    print_summary("", &summary);
    Ok(ExitCode::SUCCESS)
}

/// `custos export --format actiance`: one Actiance XML file of the selected messages.
pub fn export_actiance(
    config: &Path,
    out: &Path,
    query: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let (a, master, signing, request) = setup(config, query, since, until)?;
    // Every node's chain: a conversation whose members sit behind different nodes is
    // one conversation.
    let chains = crate::nodes::chains(&a)?;
    let dirs: Vec<&std::path::Path> = if chains.is_empty() {
        vec![a.dir.as_path()]
    } else {
        chains.iter().map(|c| c.dir.as_path()).collect()
    };
    let records = crate::nodes::own_chain_for_records(&a, &master, &signing)?;
    let summary = custos_archive::export::actiance::export_actiance(&dirs, &master, &request, out)?;
    let sha = {
        use sha2::Digest;
        let bytes = std::fs::read(out).with_context(|| format!("reading {}", out.display()))?;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    // Handing out records is itself recorded.
    let detail = serde_json::json!({
        "format": "actiance",
        "query": request.query,
        "since": request.since.map(|t| t.to_string()),
        "until": request.until.map(|t| t.to_string()),
        "conversations": summary.conversations,
        "messages": summary.messages,
        "out": out.display().to_string(),
        "sha256": sha,
    });
    record_audit(
        &a,
        &records,
        &master,
        &signing,
        custos_archive::EventRecord::Audit {
            actor: cli_actor(),
            action: "export".into(),
            detail: detail.to_string(),
        },
    )
    .context("recording the export in the audit trail")?;
    println!(
        "exported {} message(s) in {} conversation(s), {} file transfer(s), as Actiance XML into {} (sha256 {sha})",
        summary.messages,
        summary.conversations,
        summary.file_transfers,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_summary(prefix: &str, summary: &custos_archive::ExportSummary) {
    println!(
        "{prefix}exported {} record(s) (seq {}..{}, covered by checkpoints through seq {}) into {}",
        summary.records,
        summary.first_seq.map_or("-".into(), |s| s.to_string()),
        summary.last_seq.map_or("-".into(), |s| s.to_string()),
        summary.through_seq,
        summary.out.display()
    );
    println!(
        "{prefix}selected by {}: {} record(s) read ({} of them not hashed: no exported row in their checkpoint interval), {} decrypted, {} in segments not read",
        summary.selected_by, summary.scanned, summary.skimmed, summary.decrypted, summary.skipped
    );
    for seg in &summary.shredded_segments {
        println!(
            "{prefix}not exported: shredded segment {} (seq {}..={}), its key destroyed by shred record seq {}",
            seg.segment, seg.first_seq, seg.last_seq, seg.shred_seq
        );
    }
    println!("{prefix}manifest sha256 {}", summary.manifest_sha256);
}

/// What an export's seq range lacks, as the verifier counted it: empty when nothing.
fn withheld(report: &custos_archive::ExportReport) -> String {
    if report.withheld_in_range == 0 {
        return String::new();
    }
    let mut out = format!(
        ", {} record(s) in the range not exported",
        report.withheld_in_range
    );
    if report.shredded_in_range > 0 {
        let segments: Vec<String> = report
            .shredded
            .iter()
            .map(|s| format!("{} (shred record seq {})", s.segment, s.shred_seq))
            .collect();
        out.push_str(&format!(
            " ({} of them in shredded segment(s) {})",
            report.shredded_in_range,
            segments.join(", ")
        ));
    }
    out
}

/// Several nodes' chains: one complete, separately verifiable export per chain under
/// `OUT/nodes/<name>/`, listed and signed in `nodes.json` (see
/// `custos_archive::export::nodes`).
fn export_nodes(
    a: &crate::config::ArchiveSettings,
    chains: &[crate::nodes::Chain],
    master: &custos_archive::MasterKey,
    signing: &custos_archive::SigningKey,
    out: &Path,
    request: &ExportRequest,
    scan: bool,
) -> anyhow::Result<ExitCode> {
    use custos_archive::export::nodes::{export_chains, ChainSource};
    let records = crate::nodes::own_chain_for_records(a, master, signing)?;
    let sources: Vec<ChainSource> = chains
        .iter()
        .map(|chain| ChainSource {
            node: chain.node.clone(),
            // Another node's part is named as its local directory is (its node name).
            name: if chain.own {
                chain
                    .node
                    .clone()
                    .unwrap_or_else(|| custos_archive::bucket::UNNAMED.into())
            } else {
                chain
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| custos_archive::bucket::UNNAMED.into())
            },
            dir: chain.dir.clone(),
        })
        .collect();
    let mut bar = progress("exporting");
    let parts = export_chains(
        &sources,
        master,
        signing,
        out,
        (
            request,
            &custos_archive::ExportOptions {
                scan,
                ..Default::default()
            },
        ),
        |_, read, through| bar(read, through),
        |c, summary| {
            // The export is itself evidence: record who took what, part by part.
            if let NewRecord::Event(event) = summary.audit_record(&cli_actor()) {
                record_audit(a, &records, master, signing, event).map_err(|e| e.to_string())?;
            }
            let label = chains
                .iter()
                .find(|ch| ch.dir == c.dir)
                .map_or_else(|| c.name.clone(), |ch| ch.label());
            print_summary(&format!("{label}: "), summary);
            Ok(())
        },
    )?;
    let n = parts.len();
    println!(
        "{n} node export(s) listed in {}",
        out.join("nodes.json").display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn verify_export(dir: &Path, public_key: &Path) -> anyhow::Result<ExitCode> {
    let key = custos_archive::load_verifying_key(public_key)
        .with_context(|| format!("reading the public key {}", public_key.display()))?;
    if custos_archive::export::nodes::is_nodes_export(dir) {
        return verify_nodes_export(dir, &key);
    }
    let report = custos_archive::verify_export(dir, &key);
    for problem in &report.problems {
        println!("{}: {problem}", dir.display());
    }
    println!(
        "{} file(s), {} record(s), {} proven against {} signed checkpoint(s){}: {}",
        report.files,
        report.records,
        report.proven,
        report.checkpoints,
        withheld(&report),
        if report.is_clean() {
            "ok".to_owned()
        } else {
            format!("{} problem(s)", report.problems.len())
        }
    );
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A multi-node export: the signed list and every part it names.
fn verify_nodes_export(dir: &Path, key: &custos_archive::VerifyingKey) -> anyhow::Result<ExitCode> {
    let report = custos_archive::export::nodes::verify_nodes_export(dir, key);
    for (part, r) in &report.parts {
        for problem in &r.problems {
            println!("{}: {problem}", dir.join(&part.dir).display());
        }
        let label = match &part.node {
            Some(n) => format!("node {n}"),
            None => "unnamed node".into(),
        };
        println!(
            "{label}: {} file(s), {} record(s), {} proven against {} signed checkpoint(s){}: {}",
            r.files,
            r.records,
            r.proven,
            r.checkpoints,
            withheld(r),
            if r.is_clean() {
                "ok".to_owned()
            } else {
                format!("{} problem(s)", r.problems.len())
            }
        );
    }
    for p in &report.problems {
        println!("{}: {p}", dir.display());
    }
    println!(
        "{} node export(s): {}",
        report.parts.len(),
        if report.is_clean() {
            "ok"
        } else {
            "problem(s) found"
        }
    );
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Records an export in the audit trail of `records` (this node's chain), opened as the
/// server opens it when no server is running: with the archive's witness.
fn record_audit(
    a: &crate::config::ArchiveSettings,
    records: &Path,
    master: &custos_archive::MasterKey,
    signing: &custos_archive::SigningKey,
    event: custos_archive::EventRecord,
) -> Result<custos_archive::AuditSubmitted, custos_archive::SubmitError> {
    let mut cfg = crate::archive_cmds::archive_config(a, master.clone(), signing.clone());
    cfg.dir = records.to_path_buf();
    custos_archive::submit_audit_in(cfg, event)
}
