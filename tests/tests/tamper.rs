//! The administrator who wants records gone: a real archive filled by real traffic
//! through Custos (with a witness on another "mount"), stopped cleanly, then mutated one
//! way at a time in a scratch copy and checked with the real `custos verify`. Every
//! mutation must exit 1 with a located problem; the legitimate change (a rebuilt index)
//! must pass. The detection rate per kind is printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use custos_e2e::custos::run_custos;
use custos_e2e::rig::{BoxError, Rig, RigOptions};
use custos_e2e::scripted::Scripted;

type TestResult = Result<(), BoxError>;

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// One scratch copy of the archive and witness, and a config that points at it.
struct Scratch {
    root: PathBuf,
    archive: PathBuf,
    config: PathBuf,
}

fn scratch(
    base: &Path,
    n: usize,
    archive: &Path,
    witness: &Path,
    secrets: &Path,
) -> Result<Scratch, BoxError> {
    let root = base.join(format!("m{n}"));
    let a = root.join("archive");
    let w = root.join("witness");
    custos_e2e::dir::copy_dir(archive, &a)?;
    custos_e2e::dir::copy_dir(witness, &w)?;
    let config = root.join("verify.toml");
    std::fs::write(
        &config,
        format!(
            "[archive]\ndir = \"{}\"\nmaster_key = \"{}\"\nsigning_key = \"{}\"\nwitness = \"{}\"\n",
            a.display(),
            secrets.join("master.key").display(),
            secrets.join("signing.key").display(),
            w.display()
        ),
    )?;
    Ok(Scratch {
        root,
        archive: a,
        config,
    })
}

/// `custos verify`: (exit ok, stdout).
fn verify(s: &Scratch) -> Result<(bool, String), BoxError> {
    let out = run_custos(&["verify"], Some(&s.config))?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_of_the_archive_its_keys_or_its_index_is_found() -> TestResult {
    let elsewhere = tempfile::tempdir()?;
    let witness = elsewhere.path().join("witness");
    let mut rig = Rig::start(
        "tamper",
        RigOptions {
            archive: true,
            archive_extra: custos_e2e::config::table([
                ("witness", custos_e2e::config::path(&witness)),
                ("segment_max_bytes", 6000.into()),
            ]),
            ..RigOptions::default()
        },
    )?;
    // Real traffic: two users behind Custos, enough for several sealed segments.
    let mut alice = Scripted::login(
        rig.custos.listener(1),
        rig.ca.cert_path(),
        "alice",
        "alice-secret",
        "laptop",
    )
    .await?;
    let mut bob = Scripted::login(
        rig.custos.listener(1),
        rig.ca.cert_path(),
        "bob",
        "bob-secret",
        "phone",
    )
    .await?;
    let archive = rig.archive_dir.clone().ok_or("no archive")?;
    let old_index = elsewhere.path().join("old-index");
    for i in 0..60 {
        alice
            .send(&format!(
                "<message to='bob@example.test/phone' type='chat' id='t{i}'><body>tamper test message {i}</body></message>"
            ))
            .await?;
        assert!(bob
            .message_containing(&format!("tamper test message {i}"), Duration::from_secs(5))
            .await?
            .is_some());
        if i == 30 {
            // An older index, for rolling back to later.
            tokio::time::sleep(Duration::from_millis(800)).await;
            custos_e2e::dir::copy_dir(&archive.join("index"), &old_index)?;
        }
        if i == 45 {
            // The records it lacks then span more than a crash can leave unindexed
            // (verify takes a lag within the log's last 3 s for a crash).
            tokio::time::sleep(Duration::from_millis(3500)).await;
        }
    }
    drop(alice);
    drop(bob);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A clean stop seals the active segment and witnesses its seal.
    rig.custos.terminate(Duration::from_secs(20));
    let secrets = rig.custos_dir.join("secrets");
    let base = elsewhere.path().join("scratch");

    let mut n = 0;
    let mut next = || -> Result<Scratch, BoxError> {
        n += 1;
        scratch(&base, n, &archive, &witness, &secrets)
    };
    // The untouched copy verifies.
    let clean = next()?;
    let (ok, text) = verify(&clean)?;
    assert!(ok, "a clean archive fails verify: {text}");
    let segments = files(&clean.archive.join("segments"));
    assert!(segments.len() >= 3, "want several segments: {segments:?}");

    let mut rng = Rng(0x5eed_c057_05a1_1ce5);
    let mut results: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut misses = Vec::new();
    let mut tally = |kind: &'static str,
                     s: &Scratch,
                     results: &mut BTreeMap<&str, (u32, u32)>|
     -> Result<(), BoxError> {
        let (ok, text) = verify(s)?;
        let e = results.entry(kind).or_default();
        e.1 += 1;
        // Detected means exit 1 and a located problem line naming the archive.
        if !ok && text.contains(&s.archive.display().to_string()) {
            e.0 += 1;
        } else {
            let what = std::fs::read_to_string(s.root.join("mutation.txt")).unwrap_or_default();
            misses.push(format!("{kind} ({}) {what}: {text}", s.root.display()));
        }
        Ok(())
    };

    // Byte flips in segments, keys, archive.meta and index files.
    for _ in 0..40 {
        let s = next()?;
        let pool: Vec<PathBuf> = files(&s.archive.join("segments"))
            .into_iter()
            .chain(files(&s.archive.join("keys")))
            .chain([s.archive.join("archive.meta")])
            .chain(
                files(&s.archive.join("index"))
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e != "lock")),
            )
            .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
            .collect();
        let target = &pool[rng.below(pool.len() as u64) as usize];
        let mut bytes = std::fs::read(target)?;
        let at = rng.below(bytes.len() as u64) as usize;
        let mask = 1 + rng.below(255) as u8;
        // Kept beside the copy, so a miss can be read.
        std::fs::write(
            s.root.join("mutation.txt"),
            format!("{} byte {at} ^= {mask:#04x}", target.display()),
        )?;
        bytes[at] ^= mask;
        std::fs::write(target, &bytes)?;
        let kind = if target.starts_with(s.archive.join("index")) {
            "flip: index"
        } else if target.starts_with(s.archive.join("keys")) {
            "flip: key"
        } else if target.ends_with("archive.meta") {
            "flip: meta"
        } else {
            "flip: segment"
        };
        tally(kind, &s, &mut results)?;
    }
    // Truncation of any segment at random points.
    for _ in 0..20 {
        let s = next()?;
        let segs = files(&s.archive.join("segments"));
        let target = &segs[rng.below(segs.len() as u64) as usize];
        let len = std::fs::metadata(target)?.len();
        let f = std::fs::OpenOptions::new().write(true).open(target)?;
        f.set_len(rng.below(len))?;
        tally("truncate segment", &s, &mut results)?;
    }
    // Deleting the first, a middle and the last segment.
    for (kind, pick) in [
        ("delete first segment", 0usize),
        ("delete middle segment", 1),
        ("delete last segment", usize::MAX),
    ] {
        let s = next()?;
        let segs = files(&s.archive.join("segments"));
        let target = &segs[pick.min(segs.len() - 1)];
        std::fs::remove_file(target)?;
        tally(kind, &s, &mut results)?;
    }
    // Two segments swapped.
    {
        let s = next()?;
        let segs = files(&s.archive.join("segments"));
        let (a, b) = (&segs[0], &segs[1]);
        let tmp = s.root.join("swap");
        std::fs::rename(a, &tmp)?;
        std::fs::rename(b, a)?;
        std::fs::rename(&tmp, b)?;
        tally("swap segments", &s, &mut results)?;
    }
    // A key file deleted without a signed shred record.
    for pick in [0usize, 1] {
        let s = next()?;
        let keys = files(&s.archive.join("keys"));
        std::fs::remove_file(&keys[pick])?;
        tally("delete key", &s, &mut results)?;
    }
    // The index deleted, and rolled back to an older copy.
    {
        let s = next()?;
        std::fs::remove_dir_all(s.archive.join("index"))?;
        tally("delete index", &s, &mut results)?;
        let s = next()?;
        std::fs::remove_dir_all(s.archive.join("index"))?;
        custos_e2e::dir::copy_dir(&old_index, &s.archive.join("index"))?;
        std::fs::remove_file(s.archive.join("index/.tantivy-writer.lock")).ok();
        tally("roll back index", &s, &mut results)?;
        // `custos search` with no server running brings it up to the log first, says
        // so, and answers from all of it; verify then passes.
        let out = run_custos(&["search", "tamper"], Some(&s.config))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("search index caught up"), "{stderr}");
        assert!(!stderr.contains("warning"), "{stderr}");
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(lines, 60, "every message, each once: {stderr}");
        let (ok, text) = verify(&s)?;
        assert!(ok, "an index brought up to the log must pass: {text}");
    }
    // An index copied from another archive (same keys, another archive id).
    {
        let other = elsewhere.path().join("other-archive");
        let master = custos_archive::MasterKey::from_file(&secrets.join("master.key"))?;
        let signing = custos_archive::load_signing_key(&secrets.join("signing.key"))?;
        let a = custos_archive::Archive::open(custos_archive::ArchiveConfig::new(
            other.clone(),
            master,
            signing,
        ))?;
        for i in 0..70 {
            a.append(custos_archive::NewRecord::Message(other_message(i)))
                .await?;
        }
        a.close().await?;
        let s = next()?;
        std::fs::remove_dir_all(s.archive.join("index"))?;
        custos_e2e::dir::copy_dir(&other.join("index"), &s.archive.join("index"))?;
        tally("foreign index", &s, &mut results)?;
    }
    // The witness removed.
    {
        let s = next()?;
        for f in files(&s.root.join("witness")) {
            std::fs::remove_file(f)?;
        }
        let (ok, text) = verify(&s)?;
        assert!(!ok && text.contains("witness"), "{text}");
    }
    // Legitimate: a rebuilt index passes.
    {
        let s = next()?;
        std::fs::remove_dir_all(s.archive.join("index"))?;
        let out = run_custos(&["reindex"], Some(&s.config))?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (ok, text) = verify(&s)?;
        assert!(ok, "a rebuilt index must pass: {text}");
    }

    // Legitimate: a sealed segment crypto-shredded through a signed shred record passes,
    // and the same key deleted by hand in a copy made before the record does not.
    {
        let s = next()?;
        let master = custos_archive::MasterKey::from_file(&secrets.join("master.key"))?;
        let signing = custos_archive::load_signing_key(&secrets.join("signing.key"))?;
        let mut cfg = custos_archive::ArchiveConfig::new(s.archive.clone(), master, signing);
        cfg.witness = Some(s.root.join("witness"));
        let a = custos_archive::Archive::open(cfg)?;
        a.shred_segment(1, "erasure ordered", "retention: default 6y", "tamper-test")
            .await?;
        a.close().await?;
        let (ok, text) = verify(&s)?;
        assert!(ok, "a signed shred must pass: {text}");
        assert!(text.contains("shredded"), "{text}");
    }

    let (found, total) = results
        .values()
        .fold((0, 0), |(f, t), (a, b)| (f + a, t + b));
    println!("tamper detection: {found}/{total}");
    for (kind, (f, t)) in &results {
        println!("  {kind:24} {f}/{t}");
    }
    assert!(misses.is_empty(), "undetected:\n{}", misses.join("\n---\n"));
    Ok(())
}

/// A message for the other archive whose index is copied in.
fn other_message(i: u64) -> custos_archive::MessageRecord {
    custos_archive::MessageRecord {
        session: custos_archive::SessionId("other".into()),
        ..custos_archive::MessageRecord::chat(
            "mallory@example.test/x",
            "bob@example.test",
            format!("tamper test message {i}"),
        )
    }
}
