//! WORM on object storage against a real S3 server that enforces Object Lock (moto):
//! real traffic through `custos serve` into a bucket in compliance mode, read back and
//! attacked with boto3 — the server itself refuses to delete a locked version, sealed
//! segments carry the right retain-until and legal-hold flags, a node with an empty
//! directory verifies and searches everything from the bucket, expiry deletes a key
//! object only once its lock has lapsed, and every version deleted, replaced or hidden
//! behind Custos's back is named by `verify`.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use custos_e2e::config::{merge, path, table, Table, Value};
use custos_e2e::custos::run_custos;
use custos_e2e::process::output_text;
use custos_e2e::rig::{BoxError, Rig, RigOptions};
use custos_e2e::s3::{S3Server, Version};
use custos_e2e::{TestDir, Tls};

type TestResult = Result<(), BoxError>;

/// `[archive]` keys: `archive` beside an `[archive.object_store]` for the bucket with
/// `store` keys.
fn object_store(s3: &S3Server, bucket: &str, creds: &Path, store: Table, archive: Table) -> Table {
    let mut o = table([
        ("endpoint", Value::from(s3.endpoint())),
        ("bucket", Value::from(bucket)),
        ("credentials", path(creds)),
    ]);
    merge(&mut o, store);
    let mut a = table([("object_store", Value::Table(o))]);
    merge(&mut a, archive);
    a
}

/// `[retention]` with a default in seconds, run every second, and the `research` class.
fn retention(default_secs: i64, research: bool) -> Table {
    let mut r = table([
        ("default", Value::from(default_secs)),
        ("run_every", Value::from(1)),
    ]);
    if research {
        r.insert("classes".into(), Value::Table(table([("research", "1y")])));
    }
    table([("retention", Value::Table(r))])
}

/// Years from now until an RFC 3339 time (negative if past).
fn years_ahead(until: &str) -> f64 {
    let t = custos_archive::Timestamp::parse(until)
        .map(|t| t.0)
        .unwrap_or(0);
    (t - custos_archive::Timestamp::now().0) as f64 / (365.25 * 86_400_000.0)
}

fn segment_objects(versions: &[Version]) -> Vec<&Version> {
    versions
        .iter()
        .filter(|v| v.key.contains("/segments/") && !v.delete_marker)
        .collect()
}

/// Polls `check` every 250 ms until it returns `Some` or `limit` passes.
fn wait_for<T>(
    limit: Duration,
    mut check: impl FnMut() -> Result<Option<T>, BoxError>,
) -> Result<Option<T>, BoxError> {
    let start = Instant::now();
    loop {
        if let Some(v) = check()? {
            return Ok(Some(v));
        }
        if start.elapsed() > limit {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segments_are_locked_in_the_bucket_and_a_fresh_node_reads_them() -> TestResult {
    let side = TestDir::new("object-store-side")?;
    let s3 = S3Server::start(side.path())?;
    let bucket = "custos-worm";
    assert!(s3.probe(bucket, &["create-bucket"])?.contains("created"));
    let creds = side.join("s3.toml");
    S3Server::write_credentials(&creds)?;

    let mut rig = Rig::start(
        "object-store",
        RigOptions {
            archive: true,
            // Carol's desk keeps a year; everything else eight seconds.
            rules: Some(
                "[[rule]]\nid = \"research-desk\"\nwhen = { any = [{ from = \"carol@example.test\" }, { to = \"carol@example.test\" }] }\naction = \"allow\"\nretention = \"research\"\n".into(),
            ),
            extra: retention(8, true),
            archive_extra: object_store(
                &s3,
                bucket,
                &creds,
                table([
                    ("lock_mode", Value::from("compliance")),
                    ("keep_local", Value::from(false)),
                    ("upload_every", Value::from(1)),
                ]),
                table([("segment_max_age", Value::from(1))]),
            ),
            ..RigOptions::default()
        },
    )?;
    let hold = rig.cli(&[
        "hold",
        "add",
        "--matter",
        "bob matter",
        "--jid",
        "bob@example.test",
    ])?;
    assert!(hold.status.success(), "{}", output_text(&hold));

    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::Direct).await?;
    let mut carol = rig.connect("carol", "desk", Tls::StartTls).await?;
    alice
        .send_chat("bob@example.test", "hold-me: the term sheet")
        .await?;
    bob.next_message().await?;
    alice
        .send_chat("carol@example.test", "research-keep: sector note")
        .await?;
    carol.next_message().await?;
    alice
        .send_chat("erin@example.test", "expire-me: lunch on friday")
        .await?;
    // The clients stay connected: bob's session end would otherwise land beside the
    // expiring message, and his hold would keep that segment too.

    // The research segment is locked for a year, in compliance mode.
    let research = wait_for(Duration::from_secs(30), || {
        let v = s3.versions(bucket, "custos/")?;
        Ok(segment_objects(&v)
            .into_iter()
            .find(|o| {
                o.until
                    .as_deref()
                    .is_some_and(|u| (0.9..1.1).contains(&years_ahead(u)))
            })
            .cloned())
    })?
    .ok_or_else(|| format!("no segment locked for a year appeared\n{}", rig.context()))?;
    assert_eq!(research.mode.as_deref(), Some("COMPLIANCE"));

    // Every stored object is locked (but the index copy, derived data rebuilt from the
    // segments at will); a segment's key object has the same lock.
    let versions = s3.versions(bucket, "custos/")?;
    for v in versions
        .iter()
        .filter(|v| !v.delete_marker && !v.key.starts_with("custos/index/"))
    {
        assert_eq!(v.mode.as_deref(), Some("COMPLIANCE"), "{v:?}");
        assert!(v.until.is_some(), "{v:?}");
    }
    let research_key = research
        .key
        .replace("segments/seg-", "keys/segment-")
        .replace(".log", ".key");
    assert!(
        versions
            .iter()
            .any(|v| v.key == research_key && v.until == research.until),
        "{research_key} locked as its segment\n{versions:?}"
    );

    // The server refuses to delete a locked version, whoever asks.
    let refused = s3.probe(bucket, &["delete", &research.key, &research.version])?;
    assert!(refused.starts_with("refused"), "{refused}");

    // Past its retention, bob's segment is kept by the hold: legal hold set on it.
    let held = wait_for(Duration::from_secs(40), || {
        let v = s3.versions(bucket, "custos/")?;
        Ok(segment_objects(&v)
            .into_iter()
            .find(|o| o.legal_hold)
            .cloned())
    })?
    .ok_or_else(|| format!("no legal hold was set\n{}", rig.context()))?;
    assert!(
        years_ahead(held.until.as_deref().unwrap_or("")) < 0.5,
        "{held:?}"
    );

    // The expired message is shredded, and its key object deleted once the lock lapsed.
    let gone = wait_for(Duration::from_secs(40), || {
        let v = rig.cli(&["verify"])?;
        let t = output_text(&v);
        Ok((t.contains("shredded: segment")
            && !t.contains("is deleted from the bucket by the next object sync"))
        .then_some(t))
    })?
    .ok_or_else(|| format!("no shred completed in the bucket\n{}", rig.context()))?;
    assert!(gone.contains(": ok"), "{gone}");
    assert!(rig.search("\"expire me\"")?.is_empty());
    assert_eq!(rig.search("\"hold me\"")?.len(), 1);

    // Stored segments left the local disk. A shredded one may stay (it is unreadable),
    // and the newest may be between its upload and the removal of its local copy (each
    // sync records the upload first), so only those older than the newest two count.
    let archive_dir = rig.archive_dir.clone().ok_or("no archive dir")?;
    let id_of = |name: &str| -> Option<u64> {
        name.rsplit('/')
            .next()?
            .strip_prefix("seg-")?
            .strip_suffix(".log")?
            .parse()
            .ok()
    };
    let versions = s3.versions(bucket, "custos/")?;
    let stored: Vec<u64> = segment_objects(&versions)
        .iter()
        .filter_map(|v| id_of(&v.key))
        .collect();
    let newest = stored.iter().copied().max().unwrap_or(0);
    let keyed = |id: u64| {
        versions
            .iter()
            .any(|v| v.key == format!("custos/keys/segment-{id:010}.key") && !v.delete_marker)
    };
    let lingering: Vec<u64> = std::fs::read_dir(archive_dir.join("segments"))?
        .filter_map(|e| id_of(&e.ok()?.file_name().into_string().ok()?))
        .filter(|id| stored.contains(id) && keyed(*id) && id + 2 < newest)
        .collect();
    assert!(
        stored.len() >= 4 && lingering.is_empty(),
        "stored {stored:?}; still on the local disk although stored: {lingering:?}"
    );

    // A node with an empty directory, the keys and the config verifies and searches
    // everything from the bucket.
    let fresh = rig.dir.join("fresh");
    std::fs::create_dir_all(&fresh)?;
    let fresh_config = fresh.join("custos.toml");
    let fresh_archive = fresh.join("archive");
    // The serving node's archive and retention settings, with a directory and a name of
    // its own: the reader records its export in its own chain, never in the chain the
    // serving node writes.
    let mut reader = Table::new();
    for key in ["archive", "retention"] {
        if let Some(v) = rig.config.get(key) {
            reader.insert(key.into(), v.clone());
        }
    }
    let archive = custos_e2e::config::section_mut(&mut reader, "archive");
    archive.insert("dir".into(), path(&fresh_archive));
    archive.insert("node".into(), Value::from("reader"));
    let body = custos_e2e::config::render(&reader);
    std::fs::write(&fresh_config, body)?;
    let v = run_custos(&["verify"], Some(&fresh_config))?;
    assert!(v.status.success(), "{}", output_text(&v));
    // The first search takes the bucket's copy of the index. Killed after it fetched the
    // segment files, then again after it switched the commit, it leaves an index that
    // verifies: tantivy's file list names every file present at each step.
    for point in ["index-fetch-files", "index-fetch-meta"] {
        let killed = std::process::Command::new(custos_e2e::custos::custos_bin())
            .args(["search", "--json", "\"research keep\"", "--config"])
            .arg(&fresh_config)
            .env("CUSTOS_CRASH_AT", point)
            .stdin(std::process::Stdio::null())
            .output()?;
        assert!(
            killed.status.code().is_none(),
            "not killed at {point}: {}",
            output_text(&killed)
        );
        let v = run_custos(&["verify"], Some(&fresh_config))?;
        assert!(v.status.success(), "after {point}: {}", output_text(&v));
    }
    let s = run_custos(
        &["search", "--json", "\"research keep\""],
        Some(&fresh_config),
    )?;
    assert!(s.status.success(), "{}", output_text(&s));
    assert_eq!(
        String::from_utf8_lossy(&s.stdout).lines().count(),
        1,
        "{}",
        output_text(&s)
    );
    // It searched from the serving node's copy of the index in the bucket, not from an
    // index of its own built from every segment: its index holds files put there.
    let copied: Vec<String> = s3
        .versions(bucket, "custos/index/")?
        .iter()
        .filter(|v| !v.delete_marker)
        .filter_map(|v| v.key.strip_prefix("custos/index/").map(str::to_owned))
        .filter(|n| !n.starts_with("snap-"))
        .collect();
    let local: Vec<String> = std::fs::read_dir(fresh_archive.join("nodes/_unnamed/index"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        local.iter().any(|n| copied.contains(n)),
        "the reader's index {local:?} has none of the bucket's index files {copied:?}"
    );
    // Prefix terms work there too: the copy brought the sealed word lists beside it.
    let p = run_custos(&["search", "--json", "resear* keep"], Some(&fresh_config))?;
    assert!(p.status.success(), "{}", output_text(&p));
    assert_eq!(
        String::from_utf8_lossy(&p.stdout).lines().count(),
        1,
        "{}",
        output_text(&p)
    );
    let word_objects: Vec<String> = s3
        .versions(bucket, "custos/index/words/")?
        .iter()
        .filter(|v| !v.delete_marker)
        .filter_map(|v| v.key.strip_prefix("custos/index/words/").map(str::to_owned))
        .collect();
    let local_words: Vec<String> =
        std::fs::read_dir(fresh_archive.join("nodes/_unnamed/vocabulary"))?
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .map(|b| {
                use sha2::Digest;
                sha2::Sha256::digest(&b)
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect()
            })
            .collect();
    assert!(
        local_words.iter().any(|h| word_objects.contains(h)),
        "the reader's word lists {local_words:?} are none of the bucket's {word_objects:?}"
    );
    // The bucket's index copy is derived data, put without a lock, and pruned as the
    // chain grows: a snapshot's files can go while a reader fetches it. The reader then
    // keeps its own index and word lists, indexes the rest from the segments, and its
    // prefix terms still work.
    alice
        .send_chat("carol@example.test", "research-more: a second sector note")
        .await?;
    carol.next_message().await?;
    // The serving node stops, and a last sync stores its chain and index to the end,
    // so that the reader's next search finds a copy past its own to fetch.
    drop((alice, bob, carol));
    rig.custos
        .terminate(Duration::from_secs(20))
        .ok_or("custos did not stop")?;
    let sync = rig.cli(&["object-store", "sync"])?;
    assert!(sync.status.success(), "{}", output_text(&sync));
    let behind = |t: &str| -> Option<(u64, u64)> {
        let at = t.find("search index covers seqs up to ")?;
        let mut words = t[at..]
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok());
        Some((words.next()?, words.next()?))
    };
    let snapshots = || -> Result<Vec<u64>, BoxError> {
        Ok(s3
            .versions(bucket, "custos/index/snap-")?
            .iter()
            .filter(|v| !v.delete_marker)
            .filter_map(|v| {
                v.key
                    .strip_prefix("custos/index/snap-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect())
    };
    // Until the bucket holds a snapshot past the reader's index and within what it reads.
    wait_for(Duration::from_secs(40), || {
        // Listed first: the segments a snapshot covers are stored before it is put.
        let there = snapshots()?;
        let v = run_custos(&["verify"], Some(&fresh_config))?;
        let Some((ours, end)) = behind(&output_text(&v)) else {
            return Ok(None);
        };
        Ok(there.iter().any(|t| *t > ours && *t <= end).then_some(()))
    })?
    .ok_or_else(|| {
        let v = run_custos(&["verify"], Some(&fresh_config))
            .map(|o| output_text(&o))
            .unwrap_or_default();
        format!(
            "no snapshot of the index past the reader's was stored: {:?}\n{v}\n{}",
            snapshots().unwrap_or_default(),
            rig.context()
        )
    })?;
    for v in s3.versions(bucket, "custos/index/")? {
        let name = v.key.strip_prefix("custos/index/").unwrap_or_default();
        if v.delete_marker || name.starts_with("snap-") || name.starts_with("words") {
            continue;
        }
        let deleted = s3.probe(bucket, &["delete", &v.key, &v.version])?;
        assert!(deleted.starts_with("deleted"), "{}: {deleted}", v.key);
    }
    let p = run_custos(&["search", "--json", "resear*"], Some(&fresh_config))?;
    let out = output_text(&p);
    assert!(p.status.success(), "{out}");
    assert!(
        out.contains("the bucket's copy of the search index cannot be used"),
        "{out}"
    );
    assert_eq!(
        String::from_utf8_lossy(&p.stdout).lines().count(),
        2,
        "{out}"
    );
    let v = run_custos(&["verify"], Some(&fresh_config))?;
    assert!(v.status.success(), "{}", output_text(&v));
    // … and exports it: the export proves its records offline.
    let out = fresh.join("export");
    let ex = run_custos(
        &["export", "--out", out.to_str().ok_or("path")?],
        Some(&fresh_config),
    )?;
    assert!(ex.status.success(), "{}", output_text(&ex));
    let public = rig.custos_dir.join("secrets/signing.key.pub");
    let ve = run_custos(
        &[
            "verify-export",
            out.to_str().ok_or("path")?,
            "--public-key",
            public.to_str().ok_or("path")?,
        ],
        None,
    )?;
    assert!(ve.status.success(), "{}", output_text(&ve));
    Ok(())
}

/// What an administrator with delete rights (governance bypass) or only write rights
/// can do to the bucket, and what `verify` says about each.
#[test]
fn verify_names_every_version_deleted_replaced_or_hidden() -> TestResult {
    let dir = TestDir::new("object-store-tamper")?;
    let s3 = S3Server::start(dir.path())?;
    let bucket = "custos-governed";
    s3.probe(bucket, &["create-bucket"])?;
    let creds = dir.join("s3.toml");
    S3Server::write_credentials(&creds)?;
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    let config = dir.join("custos.toml");
    let mut archive = table([
        ("dir", path(&dir.join("archive"))),
        ("master_key", path(&secrets.join("master.key"))),
        ("signing_key", path(&secrets.join("signing.key"))),
    ]);
    merge(
        &mut archive,
        object_store(
            &s3,
            bucket,
            &creds,
            table([("lock_mode", "governance")]),
            Table::new(),
        ),
    );
    std::fs::write(
        &config,
        custos_e2e::config::render(&table([("archive", Value::Table(archive))])),
    )?;
    let run = |args: &[&str]| -> Result<Output, BoxError> { Ok(run_custos(args, Some(&config))?) };
    assert!(run(&["keys", "init"])?.status.success());
    let check = run(&["object-store", "check"])?;
    assert!(check.status.success(), "{}", output_text(&check));
    // Each command opens the archive and seals a segment when it closes.
    let first = run(&["object-store", "sync"])?;
    assert!(first.status.success(), "{}", output_text(&first));
    for matter in ["m1", "m2", "m3"] {
        let h = run(&["hold", "add", "--matter", matter, "--jid", "x@example.test"])?;
        assert!(h.status.success(), "{}", output_text(&h));
    }
    let sync = run(&["object-store", "sync"])?;
    assert!(sync.status.success(), "{}", output_text(&sync));
    assert!(
        output_text(&sync).contains("4 segment(s) stored"),
        "{}",
        output_text(&sync)
    );
    let clean = run(&["verify"])?;
    assert!(clean.status.success(), "{}", output_text(&clean));
    assert!(
        output_text(&clean).contains("stored segment(s) checked"),
        "{}",
        output_text(&clean)
    );

    let versions = s3.versions(bucket, "custos/segments/")?;
    let target = versions
        .iter()
        .find(|v| v.key.ends_with("seg-0000000002.log"))
        .ok_or("segment 2 not in the bucket")?
        .clone();
    // Without the bypass right the server refuses; with it the version goes, and verify
    // names it although the local copy is intact.
    let no = s3.probe(bucket, &["delete", &target.key, &target.version])?;
    assert!(no.starts_with("refused"), "{no}");
    let yes = s3.probe(bucket, &["delete-bypass", &target.key, &target.version])?;
    assert_eq!(yes.trim(), "deleted");
    let v = run(&["verify"])?;
    assert!(!v.status.success(), "{}", output_text(&v));
    assert!(
        output_text(&v).contains(&format!("{} version {}", target.key, target.version))
            && output_text(&v).contains("gone from the bucket"),
        "{}",
        output_text(&v)
    );

    // Someone with only write rights: another version with other bytes, and a delete
    // marker over a segment.
    let other = versions
        .iter()
        .find(|v| v.key.ends_with("seg-0000000003.log"))
        .ok_or("segment 3 not in the bucket")?
        .clone();
    s3.probe(bucket, &["overwrite", &other.key])?;
    let v = run(&["verify"])?;
    assert!(
        output_text(&v).contains(&other.key) && output_text(&v).contains("holds other bytes"),
        "{}",
        output_text(&v)
    );
    let third = versions
        .iter()
        .find(|v| v.key.ends_with("seg-0000000004.log"))
        .ok_or("segment 4 not in the bucket")?
        .clone();
    s3.probe(bucket, &["delete-marker", &third.key])?;
    let v = run(&["verify"])?;
    assert!(
        output_text(&v).contains(&third.key) && output_text(&v).contains("delete marker"),
        "{}",
        output_text(&v)
    );

    // Moving a lock's date closer (AWS refuses it in compliance mode; moto does not, and
    // governance lets a privileged user): verify names the shortened lock.
    let key_of_first = versions
        .iter()
        .find(|v| v.key.ends_with("seg-0000000001.log"))
        .ok_or("segment 1 not in the bucket")?
        .clone();
    s3.probe(
        bucket,
        &["shorten", &key_of_first.key, &key_of_first.version],
    )?;
    let v = run(&["verify"])?;
    assert!(
        output_text(&v).contains(&key_of_first.key)
            && output_text(&v).contains("lock was shortened"),
        "{}",
        output_text(&v)
    );
    Ok(())
}

/// Starts another node in front of the rig's server: the same upstream, keys, bucket
/// and retention; its own directory and name (the rig's node is `n1`).
fn second_node(rig: &Rig, name: &str) -> Result<custos_e2e::custos::Custos, BoxError> {
    rig.another_node(
        name,
        Some(name),
        &[custos_e2e::custos::ListenerKind::StartTls],
    )
}

/// The body of a plain HTTP/1.1 GET with a cookie (the UI's downloads have a length).
async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    cookie: &str,
) -> Result<Vec<u8>, BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut all)).await??;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {head}").into());
    }
    Ok(all.split_off(split + 4))
}

/// Flags what only the second node carries in the several-nodes test.
const SECOND_ONLY_RULE: &str = "[[rule]]\nid = \"second-only\"\nwhen = { body = { regex = \"(?i)second-only\" } }\naction = \"flag\"\n";

/// Connects `user` through `node` instead of the rig's own node.
async fn connect_via(
    rig: &Rig,
    node: &custos_e2e::custos::Custos,
    user: &str,
    resource: &str,
) -> Result<custos_e2e::slix::SlixClient, BoxError> {
    let mut opts = rig.client(user, resource, Tls::StartTls);
    opts.addr = node.listener(0);
    Ok(custos_e2e::slix::SlixClient::connect(opts).await?)
}

/// Two nodes in front of one Prosody share a bucket, each writing its own chain under
/// its own name; a third node with only the config, the keys and an empty directory
/// verifies both chains and finds every message with the copies each node carried. A
/// chain copied under a third name is named by `verify`, not counted as a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_their_own_chains_and_a_reader_merges_them() -> TestResult {
    let side = TestDir::new("object-store-nodes-side")?;
    let s3 = S3Server::start(side.path())?;
    let bucket = "custos-nodes";
    assert!(s3.probe(bucket, &["create-bucket"])?.contains("created"));
    let creds = side.join("s3.toml");
    S3Server::write_credentials(&creds)?;
    let rig = Rig::start(
        "object-store-nodes",
        RigOptions {
            archive: true,
            archive_extra: object_store(
                &s3,
                bucket,
                &creds,
                table([
                    ("lock_mode", Value::from("governance")),
                    ("upload_every", Value::from(1)),
                ]),
                table([
                    ("node", Value::from("n1")),
                    ("segment_max_age", Value::from(1)),
                ]),
            ),
            web: true,
            rules: Some(SECOND_ONLY_RULE.into()),
            ..RigOptions::default()
        },
    )?;
    let node2 = second_node(&rig, "n2")?;
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = connect_via(&rig, &node2, "bob", "phone").await?;
    alice
        .send_chat(
            "bob@example.test",
            "nodes-one: alice through the first node",
        )
        .await?;
    bob.next_message().await?;
    bob.send_chat(
        "alice@example.test",
        "nodes-two: bob through the second node",
    )
    .await?;
    alice.next_message().await?;
    // A flagged message between two users of the second node: no copy on the first.
    let mut carol = connect_via(&rig, &node2, "carol", "desk").await?;
    bob.send_chat(
        "carol@example.test",
        "second-only: bob tells carol through the second node",
    )
    .await?;
    carol.next_message().await?;

    // A node with an empty directory reads both chains from the bucket once their
    // segments are sealed and stored.
    let reader_dir = rig.dir.join("reader");
    std::fs::create_dir_all(&reader_dir)?;
    let reader_config = reader_dir.join("custos.toml");
    // The first node's archive settings, with a directory of its own and no node name.
    let mut reader = Table::new();
    if let Some(v) = rig.config.get("archive") {
        reader.insert("archive".into(), v.clone());
    }
    let archive = custos_e2e::config::section_mut(&mut reader, "archive");
    archive.insert("dir".into(), path(&reader_dir.join("archive")));
    archive.remove("node");
    let body = custos_e2e::config::render(&reader);
    std::fs::write(&reader_config, body)?;
    let messages = wait_for(Duration::from_secs(40), || {
        let s = run_custos(&["search", "--json", "nodes"], Some(&reader_config))?;
        let found: Vec<serde_json::Value> = String::from_utf8_lossy(&s.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        // Each message has the sender's copy on one node and the recipient's on the other.
        let both = |m: &serde_json::Value| {
            let nodes: Vec<&str> = m["copies"]
                .as_array()
                .map(|c| c.iter().filter_map(|c| c["node"].as_str()).collect())
                .unwrap_or_default();
            nodes.contains(&"n1") && nodes.contains(&"n2")
        };
        Ok((found.len() == 2 && found.iter().all(both)).then_some(found))
    })?
    .ok_or_else(|| {
        let s = run_custos(&["search", "--json", "nodes"], Some(&reader_config))
            .map(|o| output_text(&o))
            .unwrap_or_default();
        format!(
            "the reader did not find both messages on both nodes\n{s}\n{}\n{}",
            rig.context(),
            node2.log_tail()
        )
    })?;
    // In time order across the nodes, as one chain's are.
    assert!(
        messages[1]["body"]
            .as_str()
            .is_some_and(|b| b.contains("nodes-two")),
        "{messages:#?}"
    );
    for m in &messages {
        let copies = m["copies"].as_array().ok_or("copies")?;
        for c in copies {
            let want = if c["leg"] == "client-to-server" {
                // The sender's own copy is on the node the sender connected to.
                if m["from"].as_str().unwrap_or("").starts_with("alice") {
                    "n1"
                } else {
                    "n2"
                }
            } else if m["from"].as_str().unwrap_or("").starts_with("alice") {
                "n2"
            } else {
                "n1"
            };
            assert_eq!(c["node"], want, "{m:#?}");
        }
    }
    // The first node's review UI finds both messages too, each copy's node named. Its
    // review queue holds the second node's flagged message, which opens in the
    // conversation view and is reviewed there; the review is a record of the first
    // node's chain naming the second node's record, read back into the queue.
    rig.add_user("olivia", "officer", "officer-password-1")?;
    let base = format!("http://{}", rig.web.ok_or("no web UI")?);
    let profile = tempfile::tempdir()?;
    let browser = custos_web_ui::browser::Browser::start(profile.path()).await?;
    let seen = async {
        browser
            .sign_in(&base, "olivia", "officer-password-1")
            .await?;
        let c = browser.client();
        let start = Instant::now();
        let texts = loop {
            c.goto(&format!("{base}/search?q=nodes")).await?;
            let rows = c
                .find_all(fantoccini::Locator::Css("table.results tbody tr"))
                .await?;
            let mut texts = Vec::new();
            for r in &rows {
                // Badges are styled in capitals; the text is compared without case.
                texts.push(r.text().await?.to_lowercase());
            }
            let both = texts.len() == 2
                && texts
                    .iter()
                    .all(|t| t.contains("node n1") && t.contains("node n2"));
            if both || start.elapsed() > Duration::from_secs(20) {
                break texts;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let queued = loop {
            c.goto(&format!("{base}/queue")).await?;
            let rows = c
                .find_all(fantoccini::Locator::Css("table.queue tbody tr"))
                .await?;
            let mut found = None;
            for r in &rows {
                let t = r.text().await?.to_lowercase();
                if t.contains("carol@example.test") && t.contains("node n2") {
                    found = Some(t);
                    r.find(fantoccini::Locator::Css("a.button"))
                        .await?
                        .click()
                        .await?;
                    break;
                }
            }
            if found.is_some() || start.elapsed() > Duration::from_secs(40) {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let Some(queued) = queued else {
            return Ok::<_, BoxError>((texts, None));
        };
        let shown = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(fantoccini::Locator::Css("article.msg.hit"))
            .await?
            .text()
            .await?;
        c.find(fantoccini::Locator::Id("comment"))
            .await?
            .send_keys("Read on the first node; nothing to escalate.")
            .await?;
        c.find(fantoccini::Locator::Id("mark-reviewed"))
            .await?
            .click()
            .await?;
        let history = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(fantoccini::Locator::Css("ol.history li"))
            .await?
            .text()
            .await?;
        c.goto(&format!("{base}/queue?status=reviewed")).await?;
        let reviewed = c
            .find(fantoccini::Locator::Css("main"))
            .await?
            .text()
            .await?
            .to_lowercase();
        let session = c
            .get_named_cookie(custos_web_ui::auth::SESSION_COOKIE)
            .await?
            .value()
            .to_string();
        Ok((texts, Some((queued, shown, history, reviewed, session))))
    }
    .await;
    browser.close().await?;
    let (texts, review) = seen?;
    assert!(
        texts.len() == 2
            && texts
                .iter()
                .all(|t| t.contains("node n1") && t.contains("node n2")),
        "{texts:?}\n{}",
        rig.context()
    );
    let (queued, shown, history, reviewed, session) = review.ok_or_else(|| {
        format!(
            "the second node's flagged message never reached the first node's queue\n{}\n{}",
            rig.context(),
            node2.log_tail()
        )
    })?;
    assert!(queued.contains("bob@example.test"), "{queued}");
    assert!(
        shown.contains("bob tells carol") && shown.to_lowercase().contains("node n2"),
        "{shown}"
    );
    assert!(
        history.contains("olivia") && history.contains("marked reviewed"),
        "{history}"
    );
    assert!(
        reviewed.contains("carol@example.test") && reviewed.contains("node n2"),
        "{reviewed}"
    );
    // The UI's verifiable export holds both nodes' parts under a signed list, and
    // verifies offline with the public key alone.
    let web_export = rig.dir.join("web-export");
    std::fs::create_dir_all(&web_export)?;
    let tar_path = web_export.join("custos-export.tar");
    let tar = http_get(
        rig.web.ok_or("no web UI")?,
        "/export/regulator?q=second-only",
        &format!("{}={session}", custos_web_ui::auth::SESSION_COOKIE),
    )
    .await?;
    std::fs::write(&tar_path, tar)?;
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&web_export)
        .status()?;
    assert!(untar.success(), "tar -xf {}", tar_path.display());
    let unpacked = web_export.join("custos-export");
    assert!(
        unpacked.join("nodes.json").exists(),
        "a several-node export"
    );
    let ve = run_custos(
        &[
            "verify-export",
            unpacked.to_str().ok_or("path")?,
            "--public-key",
            rig.custos_dir
                .join("secrets/signing.key.pub")
                .to_str()
                .ok_or("path")?,
        ],
        None,
    )?;
    let out = output_text(&ve);
    assert!(ve.status.success(), "{out}");
    assert!(
        out.contains("node n1: ") && out.contains("node n2: "),
        "{out}"
    );

    let v = run_custos(&["verify"], Some(&reader_config))?;
    let out = output_text(&v);
    assert!(v.status.success(), "{out}");
    assert!(
        out.contains("node n1: ") && out.contains("node n2: "),
        "{out}"
    );
    assert!(out.contains("2 node chain(s): ok"), "{out}");

    // The reader exports both chains; the export proves each offline, and its signed
    // list of parts notices one removed.
    let out_dir = reader_dir.join("export");
    let ex = run_custos(
        &[
            "export",
            "--out",
            out_dir.to_str().ok_or("path")?,
            "--query",
            "nodes",
        ],
        Some(&reader_config),
    )?;
    assert!(ex.status.success(), "{}", output_text(&ex));
    let public = rig.custos_dir.join("secrets/signing.key.pub");
    let verify_export = || {
        run_custos(
            &[
                "verify-export",
                out_dir.to_str().unwrap_or_default(),
                "--public-key",
                public.to_str().unwrap_or_default(),
            ],
            None,
        )
    };
    let ve = verify_export()?;
    let out = output_text(&ve);
    assert!(ve.status.success(), "{out}");
    assert!(
        out.contains("node n1: ")
            && out.contains("node n2: ")
            && out.contains("2 node export(s): ok"),
        "{out}"
    );
    // The reading view merges both nodes' copies of the conversation in time order,
    // each row naming its node; it is signed with the list, so a change is named.
    let transcripts: Vec<String> = std::fs::read_dir(out_dir.join("transcripts"))?
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    let both = transcripts
        .iter()
        .find(|t| t.contains("nodes-one") && t.contains("nodes-two"))
        .ok_or("no transcript holds both messages")?;
    let (one, two) = (
        both.find("nodes-one").unwrap_or(usize::MAX),
        both.find("nodes-two").unwrap_or(0),
    );
    assert!(one < two, "in time order: {both}");
    assert!(
        both.contains("<td>n1:") && both.contains("<td>n2:"),
        "rows name their node: {both}"
    );
    let index = out_dir.join("index.html");
    let original = std::fs::read(&index)?;
    std::fs::write(&index, [original.as_slice(), b"<p>added</p>"].concat())?;
    let ve = verify_export()?;
    let out = output_text(&ve);
    assert!(!ve.status.success(), "{out}");
    assert!(
        out.contains("index.html: changed since the export was signed"),
        "{out}"
    );
    std::fs::write(&index, original)?;
    std::fs::remove_dir_all(out_dir.join("nodes/n2"))?;
    let ve = verify_export()?;
    let out = output_text(&ve);
    assert!(!ve.status.success(), "{out}");
    assert!(
        out.contains("nodes/n2: its manifest is not the one nodes.json lists"),
        "{out}"
    );

    // Someone with governance-bypass rights deletes a version of the second node's.
    let n2_versions = s3.versions(bucket, "custos/nodes/n2/segments/")?;
    let victim = segment_objects(&n2_versions)
        .into_iter()
        .next()
        .cloned()
        .ok_or("no stored segment of n2")?;
    let deleted = s3.probe(bucket, &["delete-bypass", &victim.key, &victim.version])?;
    assert!(deleted.starts_with("deleted"), "{deleted}");
    let v = run_custos(&["verify"], Some(&reader_config))?;
    let out = output_text(&v);
    assert!(!v.status.success(), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("node n2: ")
            && l.contains(&victim.key)
            && l.contains("gone from the bucket")),
        "{out}"
    );

    // Someone with write access copies the first node's chain under a third name.
    let copied = s3.probe(
        bucket,
        &["copy-prefix", "custos/nodes/n1/", "custos/nodes/n3/"],
    )?;
    assert!(copied.trim().parse::<u32>()? > 0, "{copied}");
    let v = run_custos(&["verify"], Some(&reader_config))?;
    let out = output_text(&v);
    assert!(!v.status.success(), "{out}");
    assert!(
        out.contains("node n3: ") && out.contains("holds the same archive (id) as node n1"),
        "{out}"
    );
    assert!(
        out.contains("a node.start record names node n1, but this chain is kept as node n3's"),
        "{out}"
    );
    drop((alice, bob, node2));
    Ok(())
}

/// A hold placed on one node keeps the records another node wrote: the second node's
/// expiry reads every node's holds from the bucket, shreds what no hold covers and
/// keeps the rest, and says which node's hold keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_placed_on_one_node_keeps_another_nodes_records() -> TestResult {
    let side = TestDir::new("object-store-holds-side")?;
    let s3 = S3Server::start(side.path())?;
    let bucket = "custos-node-holds";
    assert!(s3.probe(bucket, &["create-bucket"])?.contains("created"));
    let creds = side.join("s3.toml");
    S3Server::write_credentials(&creds)?;
    let rig = Rig::start(
        "object-store-node-holds",
        RigOptions {
            archive: true,
            extra: retention(6, false),
            archive_extra: object_store(
                &s3,
                bucket,
                &creds,
                table([
                    ("lock_mode", Value::from("governance")),
                    ("upload_every", Value::from(1)),
                ]),
                table([
                    ("node", Value::from("n1")),
                    ("segment_max_age", Value::from(1)),
                ]),
            ),
            ..RigOptions::default()
        },
    )?;
    // The hold goes to the first node's chain, and into the bucket once its segment is
    // sealed and stored.
    let hold = rig.cli(&[
        "hold",
        "add",
        "--matter",
        "bob matter",
        "--jid",
        "bob@example.test",
    ])?;
    assert!(hold.status.success(), "{}", output_text(&hold));
    let node2 = second_node(&rig, "n2")?;
    let node2_config = rig.dir.join("n2").join("custos.toml");
    let seen = wait_for(Duration::from_secs(30), || {
        let plan = run_custos(&["retention", "run", "--dry-run"], Some(&node2_config))?;
        Ok(output_text(&plan).contains("n1: bob matter").then_some(()))
    })?;
    assert!(
        seen.is_some(),
        "the second node never saw the first node's hold\n{}\n{}",
        rig.context(),
        node2.log_tail()
    );

    // Bob and carol both write through the second node; only bob is held.
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = connect_via(&rig, &node2, "bob", "phone").await?;
    bob.send_chat(
        "alice@example.test",
        "held-across: the second node keeps this",
    )
    .await?;
    alice.next_message().await?;
    // Far enough from bob's records to land in a segment of its own.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut carol = connect_via(&rig, &node2, "carol", "desk").await?;
    carol
        .send_chat("erin@example.test", "expire-across: nobody holds this")
        .await?;
    let search2 = |q: &str| -> Result<usize, BoxError> {
        let out = run_custos(&["search", "--json", q], Some(&node2_config))?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    };
    let shredded = wait_for(Duration::from_secs(40), || {
        Ok((search2("\"expire across\"")? == 0).then_some(()))
    })?;
    assert!(
        shredded.is_some(),
        "the unheld message was never shredded\n{}",
        node2.log_tail()
    );
    assert_eq!(search2("\"held across\"")?, 1, "{}", node2.log_tail());
    let plan = run_custos(&["retention", "run", "--dry-run"], Some(&node2_config))?;
    let plan = output_text(&plan);
    assert!(plan.contains("n1: bob matter"), "{plan}");
    // The first node may be shredding its own first segment at this very moment: a key
    // object that goes between the bucket's listing and its reading, or before the shred
    // record's segment arrives, is a note, not a problem. The bounded retry stays for
    // whatever else a live bucket may be in the middle of.
    let mut last = String::new();
    let clean = wait_for(Duration::from_secs(20), || {
        let v = run_custos(&["verify"], Some(&node2_config))?;
        last = output_text(&v);
        Ok(v.status.success().then_some(()))
    })?;
    assert!(clean.is_some(), "{last}");
    drop((alice, bob, carol, node2));
    Ok(())
}

/// Root on the node cuts the end of the active segment — records not in the bucket yet,
/// with no witness directory configured — and the log still reads as a clean, shorter
/// chain. The checkpoints the sync put in the bucket's witness, locked, name the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_witness_names_records_cut_from_the_active_segment() -> TestResult {
    let side = TestDir::new("object-store-witness-side")?;
    let s3 = S3Server::start(side.path())?;
    let bucket = "custos-witness";
    assert!(s3.probe(bucket, &["create-bucket"])?.contains("created"));
    let creds = side.join("s3.toml");
    S3Server::write_credentials(&creds)?;
    let mut rig = Rig::start(
        "object-store-witness",
        RigOptions {
            archive: true,
            archive_extra: object_store(
                &s3,
                bucket,
                &creds,
                table([
                    ("lock_mode", Value::from("compliance")),
                    ("upload_every", Value::from(1)),
                ]),
                Table::new(),
            ),
            ..RigOptions::default()
        },
    )?;
    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::StartTls).await?;
    alice
        .send_chat("bob@example.test", "cut-me: the record root wants gone")
        .await?;
    bob.next_message().await?;
    let hits = rig.search_copies_until("\"cut me\"", 2, Duration::from_secs(20))?;
    let newest = hits
        .iter()
        .filter_map(|h| h["seq"].as_u64())
        .max()
        .ok_or("no seq")?;
    // The sync witnesses a checkpoint at or after the message.
    let witnessed = wait_for(Duration::from_secs(30), || {
        let v = s3.versions(bucket, "custos/witness/")?;
        Ok(v.iter()
            .filter_map(|o| {
                o.key
                    .rsplit('/')
                    .next()?
                    .strip_prefix("cp-")?
                    .strip_suffix(".wit")?
                    .parse::<u64>()
                    .ok()
            })
            .find(|seq| *seq >= newest))
    })?
    .ok_or_else(|| format!("no witness entry reached seq {newest}\n{}", rig.context()))?;
    let versions = s3.versions(bucket, "custos/witness/")?;
    assert!(
        versions
            .iter()
            .all(|v| v.mode.as_deref() == Some("COMPLIANCE")
                && years_ahead(v.until.as_deref().unwrap_or("")) > 50.0),
        "{versions:?}"
    );
    drop((alice, bob));

    // The node dies; its active segment is cut back to its first frame.
    let pid = rig.custos.pid().ok_or("no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let dead = wait_for(Duration::from_secs(5), || {
        Ok(rig.custos.has_exited().then_some(()))
    })?;
    assert!(dead.is_some(), "custos did not die");
    let archive_dir = rig.archive_dir.clone().ok_or("no archive dir")?;
    let mut segments: Vec<_> = std::fs::read_dir(archive_dir.join("segments"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    segments.sort();
    let active = segments.last().ok_or("no segment")?;
    let bytes = std::fs::read(active)?;
    let header = custos_archive::segment::HEADER_LEN;
    let first_frame = match custos_archive::segment::parse_frame(&bytes, header) {
        custos_archive::segment::Parsed::Frame(_, next) => next,
        _ => return Err("the active segment has no whole frame".into()),
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(active)?
        .set_len(u64::try_from(first_frame)?)?;

    let v = rig.cli(&["verify"])?;
    let out = output_text(&v);
    assert!(!v.status.success(), "{out}");
    assert!(
        out.contains("bucket witness: witnessed checkpoint missing from the archive: records")
            && out.contains(&format!("..={witnessed} were removed")),
        "{out}"
    );
    Ok(())
}
