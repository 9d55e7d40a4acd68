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

pub fn export(
    config: &Path,
    out: &Path,
    query: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let a = archive_cmds::settings(config)?;
    let master = archive_cmds::master_key(&a)?;
    let signing = custos_archive::load_signing_key(&a.signing_key)
        .with_context(|| format!("reading the signing key {}", a.signing_key.display()))?;
    let request = ExportRequest {
        query: query.map(str::to_owned),
        since: time(since, "--since")?,
        until: time(until, "--until")?,
    };
    let summary = custos_archive::export(
        &a.dir,
        &master,
        &signing,
        out,
        &request,
        progress("exporting"),
    )?;
    // The export is itself evidence: record who took what.
    if let NewRecord::Event(event) = summary.audit_record(&cli_actor()) {
        custos_archive::submit_audit(&a.dir, &master, &signing, event)
            .context("recording the export in the audit trail")?;
    }
    println!(
        "exported {} record(s) (seq {}..{}, covered by checkpoints through seq {}) into {}",
        summary.records,
        summary.first_seq.map_or("-".into(), |s| s.to_string()),
        summary.last_seq.map_or("-".into(), |s| s.to_string()),
        summary.through_seq,
        summary.out.display()
    );
    println!("manifest sha256 {}", summary.manifest_sha256);
    Ok(ExitCode::SUCCESS)
}

pub fn verify_export(dir: &Path, public_key: &Path) -> anyhow::Result<ExitCode> {
    let key = custos_archive::load_verifying_key(public_key)
        .with_context(|| format!("reading the public key {}", public_key.display()))?;
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
        if report.withheld_in_range > 0 {
            format!(
                ", {} record(s) in the range not exported",
                report.withheld_in_range
            )
        } else {
            String::new()
        },
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
