//! `custos keys init`, `search`, `verify` and `reindex`: thin shells over the archive crate.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use custos_archive::{ArchiveReader, MasterKey, VerifyingKey};

use crate::config::{self, ArchiveSettings};

/// The validated `[archive]` section of a config file, or a located error.
pub fn settings(path: &Path) -> anyhow::Result<ArchiveSettings> {
    let cfg = config::load_or_fail(path)?;
    match cfg.archive {
        Some(a) => {
            crate::object_store_cmds::connect(&a)?;
            Ok(a)
        }
        None => bail!("{}: no [archive] section", path.display()),
    }
}

/// The master key from the configured file, or from `CUSTOS_MASTER_KEY`.
pub fn master_key(a: &ArchiveSettings) -> anyhow::Result<MasterKey> {
    Ok(match &a.master_key {
        Some(path) => MasterKey::from_file(path)?,
        None => MasterKey::from_base64_env()?,
    })
}

/// The writer's configuration from `[archive]`: what `serve` and `retention run` open.
pub fn archive_config(
    a: &ArchiveSettings,
    master: MasterKey,
    signing: custos_archive::SigningKey,
) -> custos_archive::ArchiveConfig {
    let mut c = custos_archive::ArchiveConfig::new(a.dir.clone(), master, signing);
    if let Some(bytes) = a.segment_max_bytes {
        c.segment_max_bytes = bytes;
    }
    if let Some(age) = a.segment_max_age {
        c.segment_max_age = age;
    }
    if let Some(n) = a.index_niceness {
        c.index_niceness = n;
    }
    c.witness = a.witness.clone();
    c.witness_shared = a.witness_shared;
    c
}

/// `<signing_key>.pub`, written by `keys init`.
pub fn public_key(a: &ArchiveSettings) -> anyhow::Result<VerifyingKey> {
    let mut name = a.signing_key.clone().into_os_string();
    name.push(".pub");
    let path = std::path::PathBuf::from(name);
    custos_archive::load_verifying_key(&path)
        .with_context(|| format!("reading the signing public key {}", path.display()))
}

pub fn keys_init(config: &Path) -> anyhow::Result<ExitCode> {
    let a = settings(config)?;
    let Some(master) = &a.master_key else {
        bail!("{}: archive.master_key is not set; with CUSTOS_MASTER_KEY the key is managed outside Custos", config.display());
    };
    let created = custos_archive::keys_init(master, &a.signing_key)?;
    println!("created master key   {}", created.master_key.display());
    println!("created signing key  {}", created.signing_key.display());
    println!(
        "created public key   {}  (give this to auditors)",
        created.public_key.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Copies fetched per logical message wanted: a message seen by both parties, their
/// second resources and a replay has a handful; the rest of the page is filled by others.
const COPIES_PER_MESSAGE: usize = 8;

pub fn search(
    config: &Path,
    query: &str,
    limit: usize,
    json: bool,
    copies: bool,
) -> anyhow::Result<ExitCode> {
    let a = settings(config)?;
    let key = master_key(&a)?;
    let query = &a
        .lexicons
        .expand(query)
        .map_err(|e| anyhow::anyhow!("bad query: {e}"))?;
    custos_archive::query::parse(query).map_err(|e| anyhow::anyhow!("bad query: {e}"))?;
    let chains = crate::nodes::chains(&a)?;
    let fetch = if copies {
        limit
    } else {
        limit.saturating_mul(COPIES_PER_MESSAGE)
    };
    let mut hits = Vec::new();
    let mut uncovered = Vec::new();
    for chain in &chains {
        let label = |what: String| {
            if chains.len() > 1 {
                format!("{}: {what}", chain.label())
            } else {
                what
            }
        };
        // With no server writing, bring the index up to the log first (a server's own
        // indexer keeps it current, and holds the lock).
        match custos_archive::update_index(&chain.dir, &key, progress("indexing")) {
            Ok(done) => {
                match &done.bucket_copy {
                    Some(custos_archive::BucketCopy::Unusable(why)) => eprintln!(
                        "warning: {}",
                        label(format!(
                            "the bucket's copy of the search index cannot be used ({why}); the local index and its word lists are kept"
                        ))
                    ),
                    Some(custos_archive::BucketCopy::Taken { through }) => eprintln!(
                        "{}",
                        label(format!(
                            "search index taken from the bucket's copy (through seq {through})"
                        ))
                    ),
                    None => {}
                }
                match done.rebuilt {
                    Some(why) => eprintln!(
                        "{}",
                        label(format!("search index rebuilt from the log ({why})"))
                    ),
                    None if done.indexed > 0 => eprintln!(
                        "{}",
                        label(format!(
                            "search index caught up: {} record(s) added",
                            done.indexed
                        ))
                    ),
                    None => {}
                }
            }
            Err(custos_archive::ReindexError::Locked { .. }) => {}
            Err(e) => eprintln!(
                "warning: {}",
                label(format!("cannot bring the search index up to the log: {e}"))
            ),
        }
        let reader = ArchiveReader::open(&chain.dir, &key)
            .with_context(|| format!("opening {}", chain.label()))?;
        let searched = reader.search_covered(query, fetch)?;
        hits.extend(searched.hits.into_iter().map(|mut h| {
            h.node.clone_from(&chain.node);
            h
        }));
        if let Some(u) = searched.uncovered {
            uncovered.push(label(u.to_string()));
        }
    }
    if chains.len() > 1 {
        custos_archive::merge_newest(&mut hits, fetch);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let count = if copies {
        for hit in &hits {
            if json {
                serde_json::to_writer(&mut out, hit)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", line(hit, 1))?;
            }
        }
        hits.len()
    } else {
        let mut messages = custos_archive::group(hits);
        messages.truncate(limit);
        for m in &messages {
            if json {
                serde_json::to_writer(&mut out, m)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", line(&m.first, m.copies.len()))?;
            }
        }
        messages.len()
    };
    if !json {
        eprintln!(
            "{count} {}",
            if copies { "record(s)" } else { "message(s)" }
        );
    }
    for u in &uncovered {
        eprintln!("warning: {u}");
    }
    Ok(ExitCode::SUCCESS)
}

fn line(hit: &custos_archive::Hit, copies: usize) -> String {
    let verdict = if hit.rules.is_empty() {
        hit.action.as_str().to_owned()
    } else {
        format!("{} [{}]", hit.action.as_str(), hit.rules.join(","))
    };
    let copies = if copies > 1 {
        format!(" ({copies} copies)")
    } else {
        String::new()
    };
    let node = hit.node.as_deref().unwrap_or_default();
    format!(
        "{node}#{} {} {} {} -> {} ({}) {}{}: {}",
        hit.seq.0,
        hit.time,
        hit.direction.as_str(),
        hit.from,
        hit.to,
        hit.stanza_type,
        verdict,
        copies,
        hit.body.as_deref().unwrap_or("")
    )
}

/// A progress bar on a terminal, nothing otherwise.
pub fn progress(label: &'static str) -> impl FnMut(u64, u64) {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(label);
        bar
    });
    move |done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
            if done >= total && total > 0 {
                bar.finish_and_clear();
            }
        }
    }
}

pub fn verify(config: &Path) -> anyhow::Result<ExitCode> {
    let a = settings(config)?;
    let public = public_key(&a)?;
    // Without the master key the chain and checkpoints are still checked; with it, every
    // record's encryption tag too.
    let key = match master_key(&a) {
        Ok(k) => Some(k),
        // A key file that is there but cannot be read is not an auditor's copy without
        // the key: checking less would hide what only the key shows (a data key removed
        // without a shred record).
        Err(e) => match a.master_key.as_deref() {
            Some(path) if path.exists() => {
                return Err(e.context(format!(
                    "reading the master key {} (leave `master_key` out of the configuration \
                     to verify the chain and checkpoints only)",
                    path.display()
                )));
            }
            None if std::env::var_os(custos_archive::MASTER_KEY_ENV).is_some() => {
                return Err(e.context(format!(
                    "{} is set but does not hold a master key (unset it to verify the chain \
                     and checkpoints only)",
                    custos_archive::MASTER_KEY_ENV
                )));
            }
            _ => {
                eprintln!("note: master key unavailable; checking the chain and checkpoints but not record contents, nor that a missing data key was shredded by a signed record");
                None
            }
        },
    };
    let chains = crate::nodes::chains(&a)?;
    let many = chains.len() > 1;
    let mut problems = 0usize;
    let mut archive_ids: Vec<([u8; 16], String)> = Vec::new();
    for chain in &chains {
        let mut report = verify_chain(&a, chain, key.as_ref(), &public);
        if let Some(key) = &key {
            if let Ok(reader) = ArchiveReader::open(&chain.dir, key) {
                let id = reader.archive_id();
                if let Some((_, other)) = archive_ids.iter().find(|(i, _)| *i == id) {
                    // A copy of one node's chain placed under another name would
                    // otherwise count its records twice.
                    report.problems.push(custos_archive::Problem {
                        segment: None,
                        offset: None,
                        seq: None,
                        what: format!("holds the same archive (id) as {other}: a copy, not a chain of its own"),
                    });
                }
                archive_ids.push((id, chain.label()));
                if custos_archive::bucket::registered(&chain.dir).is_some() {
                    match crate::nodes::check_node_records(&reader, chain.node.as_deref()) {
                        Ok((_, found)) => report.problems.extend(found),
                        Err(e) => report
                            .notes
                            .push(format!("node.start records not checked: {e}")),
                    }
                }
            }
        }
        let prefix = if many {
            format!("{}: ", chain.label())
        } else {
            String::new()
        };
        for note in &report.notes {
            eprintln!("note: {prefix}{note}");
        }
        for s in &report.shreds {
            println!(
                "{prefix}shredded: segment {} (seq {}..={}, {} record(s)) by record seq {} at {}: {} — {} (by {})",
                s.segment, s.first_seq, s.last_seq, s.records, s.by_seq, s.time, s.reason, s.authority, s.actor
            );
        }
        let place = if many {
            chain.label()
        } else {
            a.dir.display().to_string()
        };
        for problem in &report.problems {
            println!("{place}: {problem}");
        }
        problems += report.problems.len();
        if let Some(id) = &report.archive_id {
            // What names the archive's witness file: an auditor who notes it can tell a
            // later archive started afresh in this one's place.
            println!("{prefix}archive id {id}");
        }
        println!(
            "{prefix}{} segment(s), {} record(s), {} checkpoint(s), last seq {}, head {}{}: {}",
            report.segments,
            report.records,
            report.checkpoints,
            report.last_seq,
            report.head,
            if report.shredded_records > 0 {
                format!(", {} shredded", report.shredded_records)
            } else if !report.keys_unchecked.is_empty() {
                format!(
                    ", {} segment(s) without a data key (shredded or removed: unchecked without the master key)",
                    report.keys_unchecked.len()
                )
            } else {
                String::new()
            },
            if report.problems.is_empty() {
                "ok".to_owned()
            } else {
                format!("{} problem(s)", report.problems.len())
            }
        );
    }
    if many {
        println!(
            "{} node chain(s): {}",
            chains.len(),
            if problems == 0 {
                "ok".to_owned()
            } else {
                format!("{problems} problem(s)")
            }
        );
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Verifies one chain: its records, links and checkpoints; the witness where this node
/// keeps one for it; its objects in the bucket.
fn verify_chain(
    a: &ArchiveSettings,
    chain: &crate::nodes::Chain,
    key: Option<&MasterKey>,
    public: &VerifyingKey,
) -> custos_archive::VerifyReport {
    let witness = a.witness.as_ref().filter(|_| chain.own);
    // The bucket's witness is read before the log, as the local one is: what it holds
    // was in the log before it was put there, so a checkpoint written meanwhile cannot
    // look missing.
    let remote = custos_archive::bucket::registered(&chain.dir);
    let bucket_witness = remote.as_ref().map(custos_archive::bucket::bucket_witness);
    let mut report = match witness {
        Some(witness) => custos_archive::verify_witnessed(
            &chain.dir,
            key,
            public,
            witness,
            progress("verifying"),
        ),
        None => {
            if chain.own {
                eprintln!("note: no [archive] witness configured: records cut from the end of the log cannot be detected");
            }
            custos_archive::verify(&chain.dir, key, public, progress("verifying"))
        }
    };
    if let Some(remote) = remote {
        match key {
            None => report.notes.push(
                "the bucket's objects are not checked without the master key (their records are encrypted)".into(),
            ),
            Some(key) => {
                let checked = ArchiveReader::open(&chain.dir, key)
                    .map_err(custos_archive::bucket::SyncError::from)
                    .and_then(|reader| custos_archive::bucket::verify_bucket(&reader, &remote));
                match checked {
                    Ok(check) => {
                        report.notes.push(format!(
                            "bucket {}: {} stored segment(s) checked",
                            remote.client.endpoint().bucket,
                            check.segments
                        ));
                        report.notes.extend(check.notes);
                        for (segment, what) in check.problems {
                            report.problems.push(custos_archive::Problem {
                                segment,
                                offset: None,
                                seq: None,
                                what: format!("object store: {what}"),
                            });
                        }
                    }
                    Err(e) => report.problems.push(custos_archive::Problem {
                        segment: None,
                        offset: None,
                        seq: None,
                        what: format!("object store: cannot be checked: {e}"),
                    }),
                }
            }
        }
        // The bucket's witness: every checkpoint the writer put there must still be
        // reached. Read from another node, its active segment is not in the bucket yet.
        match bucket_witness.unwrap_or_else(|| Ok((Vec::new(), Vec::new()))) {
            Ok((entries, bad)) => {
                for what in bad {
                    report.problems.push(custos_archive::Problem {
                        segment: None,
                        offset: None,
                        seq: None,
                        what: format!("bucket witness: {what}"),
                    });
                }
                if entries.is_empty() {
                    report
                        .notes
                        .push("the bucket holds no witness entry for this chain yet".into());
                } else {
                    let before = report.problems.len();
                    custos_archive::check_witness_entries(
                        &mut report,
                        &entries,
                        public,
                        !chain.own,
                    );
                    for p in report.problems.iter_mut().skip(before) {
                        p.what = format!("bucket witness: {}", p.what);
                    }
                    report.notes.push(format!(
                        "bucket witness: {} checkpoint(s) witnessed",
                        entries.len()
                    ));
                }
            }
            Err(e) => report.problems.push(custos_archive::Problem {
                segment: None,
                offset: None,
                seq: None,
                what: format!("bucket witness: cannot be read: {e}"),
            }),
        }
    }
    report
}

pub fn reindex(config: &Path) -> anyhow::Result<ExitCode> {
    let a = settings(config)?;
    let key = master_key(&a)?;
    let n = custos_archive::reindex(&a.dir, &key, progress("reindexing"))?;
    println!("reindexed {n} record(s)");
    Ok(ExitCode::SUCCESS)
}
