//! Retention, legal holds and erasure with real traffic: a real Prosody behind
//! `custos serve` with short retention, an officer placing a hold in a real Chromium
//! before the custodian writes, expiry shredding what is due and nothing held, `verify`
//! naming every shred's authority, exports proving what remains; and a shred killed with
//! SIGKILL at each step, which `verify` accepts and the next run completes.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use custos_e2e::config::{section, table, Value};
use custos_e2e::custos::{custos_bin, run_custos};
use custos_e2e::process::output_text;
use custos_e2e::rig::{BoxError, Rig, RigOptions};
use custos_e2e::{TestDir, Tls};
use custos_web_ui::browser::Browser;
use fantoccini::Locator;

type TestResult = Result<(), BoxError>;

const PASSWORD: &str = "officer-password-1";

/// Polls `custos search` until `query` finds exactly `want` messages.
fn search_settles(rig: &Rig, query: &str, want: usize, limit: Duration) -> Result<usize, BoxError> {
    let start = Instant::now();
    loop {
        let n = rig.search(query)?.len();
        if n == want || start.elapsed() > limit {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_shreds_what_is_due_and_a_hold_keeps_its_custodian() -> TestResult {
    let rig = Rig::start(
        "retention",
        RigOptions {
            archive: true,
            web: true,
            // Carol's desk keeps a year; everything else four seconds.
            rules: Some(
                "[[rule]]\nid = \"research-desk\"\nwhen = { any = [{ from = \"carol@example.test\" }, { to = \"carol@example.test\" }] }\naction = \"allow\"\nretention = \"research\"\n".into(),
            ),
            extra: section(
                "retention",
                [
                    ("default", Value::from(4)),
                    ("run_every", Value::from(1)),
                    ("classes", Value::Table(table([("research", "1y")]))),
                ],
            ),
            archive_extra: table([("segment_max_age", 1)]),
            ..RigOptions::default()
        },
    )?;
    rig.add_user("olivia", "officer", PASSWORD)?;
    let base = format!("http://{}", rig.web.ok_or("no web UI")?);

    // The officer puts bob on hold before he writes anything.
    let profile = tempfile::tempdir()?;
    let browser = Browser::start(profile.path()).await?;
    let placed = async {
        browser.sign_in(&base, "olivia", PASSWORD).await?;
        let c = browser.client();
        c.goto(&format!("{base}/holds")).await?;
        c.find(Locator::Css("input[name=matter]"))
            .await?
            .send_keys("bob matter")
            .await?;
        c.find(Locator::Css("input[name=jids]"))
            .await?
            .send_keys("bob@example.test")
            .await?;
        c.find(Locator::Css("form.hold-form button"))
            .await?
            .click()
            .await?;
        let page = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("table.results"))
            .await?
            .text()
            .await?;
        Ok::<String, BoxError>(page)
    }
    .await;
    let page = match placed {
        Ok(p) => p,
        Err(e) => {
            let _ = browser.close().await;
            return Err(e);
        }
    };
    assert!(
        page.contains("bob matter") && page.contains("olivia"),
        "{page}"
    );

    let mut alice = rig.connect("alice", "laptop", Tls::StartTls).await?;
    let mut bob = rig.connect("bob", "phone", Tls::Direct).await?;
    let mut carol = rig.connect("carol", "desk", Tls::StartTls).await?;
    alice
        .send_chat("bob@example.test", "hold-me: the term sheet")
        .await?;
    bob.next_message().await?;
    // A class change starts a new segment, so each of these lands apart.
    alice
        .send_chat("carol@example.test", "research-keep: sector note")
        .await?;
    carol.next_message().await?;
    alice
        .send_chat("erin@example.test", "expire-me: lunch on friday")
        .await?;
    assert_eq!(
        rig.search_until("\"expire me\"", 1, Duration::from_secs(10))?
            .len(),
        1
    );

    // Past four seconds and the next hourly-style run, the default segment goes.
    assert_eq!(
        search_settles(&rig, "\"expire me\"", 0, Duration::from_secs(30))?,
        0,
        "the expired message is shredded\n{}",
        rig.context()
    );
    assert_eq!(rig.search("\"hold me\"")?.len(), 1, "held: kept");
    assert_eq!(rig.search("\"research keep\"")?.len(), 1, "research: kept");

    // A dry run while serving: what holds keep.
    let dry = rig.cli(&["retention", "run", "--dry-run"])?;
    assert!(dry.status.success(), "{}", output_text(&dry));
    assert!(
        output_text(&dry).contains("held by \"bob matter\""),
        "{}",
        output_text(&dry)
    );

    // verify passes and names each shred and what allowed it.
    let v = rig.cli(&["verify"])?;
    let vt = output_text(&v);
    assert!(v.status.success(), "{vt}");
    assert!(
        vt.contains("shredded: segment") && vt.contains("retention expired"),
        "{vt}"
    );
    assert!(
        vt.contains("\"class\":\"default\"") && vt.contains("bob matter"),
        "{vt}"
    );

    // The UI: gone from search, the hold badge on bob's message, the overview.
    let ui = async {
        let c = browser.client();
        c.goto(&format!("{base}/search?q=expire")).await?;
        let rows = c
            .find_all(Locator::Css("table.results tbody tr"))
            .await?
            .len();
        assert_eq!(rows, 0, "no shredded message in UI search");
        c.goto(&format!("{base}/search?q=%22hold+me%22")).await?;
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("table.results a.open"))
            .await?
            .click()
            .await?;
        let conv = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("div.conversation"))
            .await?
            .text()
            .await?;
        assert!(conv.to_lowercase().contains("hold: bob matter"), "{conv}");
        assert!(!conv.contains("expire-me"), "{conv}");
        c.goto(&format!("{base}/")).await?;
        let dash = c.find(Locator::Css("main")).await?.text().await?;
        assert!(dash.contains("segments shredded"), "{dash}");
        Ok::<(), BoxError>(())
    }
    .await;
    let _ = browser.close().await;
    ui?;

    // An export proves what remains, offline, and holds nothing shredded.
    let out_dir = rig.dir.join("export");
    let ex = rig.cli(&["export", "--out", out_dir.to_str().ok_or("path")?])?;
    assert!(ex.status.success(), "{}", output_text(&ex));
    let public = rig.custos_dir.join("secrets/signing.key.pub");
    let ve = run_custos(
        &[
            "verify-export",
            out_dir.to_str().ok_or("path")?,
            "--public-key",
            public.to_str().ok_or("path")?,
        ],
        None,
    )?;
    assert!(ve.status.success(), "{}", output_text(&ve));
    let transcripts = read_tree(&out_dir)?;
    assert!(
        transcripts.contains("hold-me"),
        "kept messages are exported"
    );
    assert!(!transcripts.contains("expire-me"), "shredded ones are not");
    assert!(
        transcripts.contains("kept: research"),
        "each row shows its retention class"
    );

    // The erasure report for bob says why his records stay.
    let er = rig.cli(&["erasure", "report", "--jid", "bob@example.test"])?;
    assert!(er.status.success(), "{}", output_text(&er));
    assert!(
        output_text(&er).contains("held by bob matter"),
        "{}",
        output_text(&er)
    );

    // Released, the next run shreds bob's segment.
    let rel = rig.cli(&["hold", "release", "--matter", "bob matter"])?;
    assert!(rel.status.success(), "{}", output_text(&rel));
    assert_eq!(
        search_settles(&rig, "\"hold me\"", 0, Duration::from_secs(30))?,
        0,
        "released: shredded by the next run\n{}",
        rig.context()
    );
    assert_eq!(rig.search("\"research keep\"")?.len(), 1);
    let v = rig.cli(&["verify"])?;
    assert!(v.status.success(), "{}", output_text(&v));
    let list = rig.cli(&["hold", "list"])?;
    assert!(
        output_text(&list).contains("released"),
        "{}",
        output_text(&list)
    );
    drop((alice, bob, carol));
    Ok(())
}

/// Every HTML transcript and manifest in an export, as one string.
fn read_tree(dir: &Path) -> Result<String, BoxError> {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            all.push_str(&read_tree(&path)?);
        } else if path
            .extension()
            .is_some_and(|e| e == "html" || e == "json" || e == "txt")
        {
            all.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    Ok(all)
}

fn custos_with(config: &Path, args: &[&str], crash_at: Option<&str>) -> Result<Output, BoxError> {
    let mut cmd = Command::new(custos_bin());
    cmd.args(args).arg("--config").arg(config);
    if let Some(point) = crash_at {
        cmd.env("CUSTOS_CRASH_AT", point);
    }
    Ok(cmd.output()?)
}

fn keys(dir: &Path) -> Result<Vec<String>, BoxError> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("keys"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// Opens the archive for writing. A `custos` child that a test running beside this one
/// spawns holds a copy of every descriptor between its fork and its exec, the writer
/// lock's among them, so for that moment the lock this process let go of is still held:
/// a lock found held is tried again for a few seconds.
async fn open_when_free(
    cfg: impl Fn() -> custos_archive::ArchiveConfig,
) -> Result<custos_archive::Archive, BoxError> {
    let start = Instant::now();
    loop {
        match custos_archive::Archive::open(cfg()) {
            Err(custos_archive::OpenError::Locked { .. })
                if start.elapsed() < Duration::from_secs(5) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Ok(other?),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_killed_at_each_step_verifies_and_the_next_run_completes_it() -> TestResult {
    use custos_archive::*;
    let tmp = TestDir::new("retention-crash")?;
    let archive = tmp.join("archive");
    let secrets = tmp.join("secrets");
    let config = tmp.join("custos.toml");
    std::fs::create_dir_all(&secrets)?;
    std::fs::write(
        &config,
        format!(
            "[archive]\ndir = \"{}\"\nmaster_key = \"{}\"\nsigning_key = \"{}\"\n\n[retention]\ndefault = 1\n",
            archive.display(),
            secrets.join("master.key").display(),
            secrets.join("signing.key").display()
        ),
    )?;
    let init = run_custos(&["keys", "init"], Some(&config))?;
    assert!(init.status.success(), "{}", output_text(&init));
    // Three sealed segments of one message each (every open starts a segment).
    let master = MasterKey::from_file(&secrets.join("master.key"))?;
    let signing = load_signing_key(&secrets.join("signing.key"))?;
    for i in 0..3 {
        let a =
            open_when_free(|| ArchiveConfig::new(archive.clone(), master.clone(), signing.clone()))
                .await?;
        a.append(NewRecord::Message(MessageRecord {
            capture: Capture {
                account: "alice@example.test/laptop".into(),
                identity: format!("{i:032x}"),
                ..Capture::default()
            },
            ..MessageRecord::chat(
                "alice@example.test/laptop",
                "bob@example.test",
                format!("crash test message {i}"),
            )
        }))
        .await?;
        a.close().await?;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // A dry run changes nothing.
    let before = keys(&archive)?;
    let dry = custos_with(&config, &["retention", "run", "--dry-run"], None)?;
    assert!(dry.status.success(), "{}", output_text(&dry));
    assert!(
        output_text(&dry).contains("3 segment(s) due"),
        "{}",
        output_text(&dry)
    );
    assert_eq!(keys(&archive)?, before);

    // Killed after the first shred record, before its key is destroyed.
    let killed = custos_with(&config, &["retention", "run"], Some("shred-recorded"))?;
    assert_eq!(killed.status.signal(), Some(9), "{}", output_text(&killed));
    let v = custos_with(&config, &["verify"], None)?;
    assert!(
        v.status.success(),
        "after a kill between record and key: {}",
        output_text(&v)
    );
    assert!(archive.join("keys/segment-0000000001.key").exists());

    // Killed after the next key is destroyed, before anything else.
    let killed = custos_with(&config, &["retention", "run"], Some("shred-key-destroyed"))?;
    assert_eq!(killed.status.signal(), Some(9), "{}", output_text(&killed));
    let v = custos_with(&config, &["verify"], None)?;
    assert!(
        v.status.success(),
        "after a kill after the key: {}",
        output_text(&v)
    );
    assert!(
        !archive.join("keys/segment-0000000001.key").exists(),
        "the interrupted shred was completed"
    );

    // The next run completes the rest; verify names all three.
    let done = custos_with(&config, &["retention", "run"], None)?;
    assert!(done.status.success(), "{}", output_text(&done));
    let v = custos_with(&config, &["verify"], None)?;
    let vt = output_text(&v);
    assert!(v.status.success(), "{vt}");
    for seg in 1..=3 {
        assert!(
            vt.contains(&format!("shredded: segment {seg} ")),
            "segment {seg}: {vt}"
        );
        assert!(!archive.join(format!("keys/segment-{seg:010}.key")).exists());
    }
    let found = custos_with(&config, &["search", "--json", "crash"], None)?;
    assert!(found.status.success(), "{}", output_text(&found));
    assert_eq!(String::from_utf8_lossy(&found.stdout).lines().count(), 0);
    Ok(())
}
