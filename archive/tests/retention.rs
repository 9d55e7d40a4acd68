//! Retention, holds and expiry on a real archive: segments cut per class, only due and
//! unheld segments shredded, each with a signed authority `verify` checks, the index
//! purged, holds covering messages written after them, and a release letting the next
//! run shred.

#![allow(clippy::unwrap_used)]

use custos_archive::retention::{
    Decision, HoldSpec, Keep, Release, RetentionPolicy, Span, HOLD_PLACE, HOLD_RELEASE,
};
use custos_archive::*;

fn msg(from: &str, to: &str, body: &str, class: &str) -> NewRecord {
    NewRecord::Message(MessageRecord {
        session: SessionId("s1".into()),
        capture: Capture {
            account: format!("{from}/desk"),
            identity: format!("{:032x}", body.len()),
            retention_class: class.into(),
            ..Capture::default()
        },
        ..MessageRecord::chat(format!("{from}/desk"), to, body)
    })
}

fn audit(action: &str, detail: String) -> NewRecord {
    NewRecord::Event(EventRecord::Audit {
        actor: "officer@firm".into(),
        action: action.into(),
        detail,
    })
}

fn policy() -> RetentionPolicy {
    RetentionPolicy::new(
        Span::Secs(1),
        [("research".to_string(), Span::Years(1))].into(),
    )
    .unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    master: MasterKey,
    signing: SigningKey,
    public: VerifyingKey,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("archive");
        let c = keys_init(
            &tmp.path().join("master.key"),
            &tmp.path().join("signing.key"),
        )
        .unwrap();
        Setup {
            dir,
            master: MasterKey::from_file(&c.master_key).unwrap(),
            signing: load_signing_key(&c.signing_key).unwrap(),
            public: c.verifying_key,
            _tmp: tmp,
        }
    }

    fn open(&self) -> Archive {
        Archive::open(ArchiveConfig::new(
            self.dir.clone(),
            self.master.clone(),
            self.signing.clone(),
        ))
        .unwrap()
    }

    fn verify(&self) -> VerifyReport {
        verify(&self.dir, Some(&self.master), &self.public, |_, _| {})
    }

    fn keys(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// Shreds the segment `facts` describes through the archive's own API, as a retention
/// shred of `class` kept one second: every figure of its authority consistent with the
/// segment, its newest record and its due date.
async fn shred_as_expired_after_a_second(
    a: &Archive,
    facts: &retention::SegmentFacts,
    class: &str,
) {
    let newest = facts.newest.unwrap();
    let authority = retention::ExpiryAuthority {
        rule: retention::EXPIRY_RULE.into(),
        class: class.into(),
        retention: "1s".into(),
        first_seq: facts.first_seq,
        last_seq: facts.last_seq,
        records: facts.records,
        newest: newest.to_string(),
        due: Span::Secs(1).due(newest).unwrap().to_string(),
        holds_checked: Vec::new(),
    };
    a.shred_segment(
        facts.segment,
        retention::EXPIRY_REASON,
        &serde_json::to_string(&authority).unwrap(),
        "custos:test",
    )
    .await
    .unwrap();
}

fn decision(plan: &ExpiryPlan, segment: u64) -> &Decision {
    &plan
        .segments
        .iter()
        .find(|s| s.facts.segment == segment)
        .unwrap_or_else(|| panic!("segment {segment} not planned: {plan:#?}"))
        .decision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_shreds_only_due_unheld_segments_and_verify_names_the_authority() {
    let s = Setup::new();
    let t0 = Timestamp::now();
    let a = s.open();
    // The hold comes first: it must cover frank's messages written after it.
    let hold = HoldSpec::new("acme v. firm", &["frank@x".into()], None, None, None).unwrap();
    a.append(audit(HOLD_PLACE, serde_json::to_string(&hold).unwrap()))
        .await
        .unwrap();
    a.append(msg("alice@x", "bob@x", "quarterly numbers", ""))
        .await
        .unwrap();
    a.append(msg("carol@x", "dave@x", "research note", "research"))
        .await
        .unwrap();
    a.append(msg("erin@x", "frank@x", "merger plan", ""))
        .await
        .unwrap();
    a.close().await.unwrap();
    // Segments: 1 the hold (permanent), 2 alice (default), 3 carol (research), 4 frank.
    let a = s.open();
    // Nothing was due when the records were written.
    let now_plan = a.reader().expiry_plan(&policy(), t0).unwrap();
    assert_eq!(now_plan.due().count(), 0, "{now_plan:#?}");
    // Past the default class's second (shred records must be written after the due date
    // they state: verify checks it against the record's own time).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let later = Timestamp::now();
    let plan = a.reader().expiry_plan(&policy(), later).unwrap();
    assert!(matches!(
        decision(&plan, 1),
        Decision::Keep(Keep::Forever { .. })
    ));
    assert!(matches!(decision(&plan, 2), Decision::Shred { class, .. } if class == "default"));
    assert!(
        matches!(decision(&plan, 3), Decision::Keep(Keep::NotDue { class, .. }) if class == "research")
    );
    assert!(
        matches!(decision(&plan, 4), Decision::Keep(Keep::Held(m)) if m.contains_key("acme v. firm"))
    );

    // A dry run changes nothing.
    let keys_before = s.keys();
    let dry = a
        .run_expiry(&policy(), later, "custos:test", true)
        .await
        .unwrap();
    assert_eq!(dry.plan.due().count(), 1);
    assert!(dry.shredded.is_empty());
    assert_eq!(s.keys(), keys_before);

    let done = a
        .run_expiry(&policy(), later, "custos:test", false)
        .await
        .unwrap();
    assert_eq!(done.shredded.iter().map(|x| x.0).collect::<Vec<_>>(), [2]);
    assert!(!s.dir.join("keys/segment-0000000002.key").exists());
    // Releasing the hold lets the next run shred frank's segment.
    a.append(audit(
        HOLD_RELEASE,
        serde_json::to_string(&Release {
            matter: "acme v. firm".into(),
        })
        .unwrap(),
    ))
    .await
    .unwrap();
    let again = a
        .run_expiry(&policy(), later, "custos:test", false)
        .await
        .unwrap();
    assert_eq!(again.shredded.iter().map(|x| x.0).collect::<Vec<_>>(), [4]);
    a.close().await.unwrap();

    let r = s.verify();
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(
        r.shreds.iter().map(|x| x.segment).collect::<Vec<_>>(),
        [2, 4]
    );
    let auth: retention::ExpiryAuthority = serde_json::from_str(&r.shreds[0].authority).unwrap();
    assert_eq!(auth.class, "default");
    assert_eq!(auth.retention, "1s");
    assert_eq!((auth.first_seq, auth.last_seq, auth.records), (2, 2, 1));
    assert_eq!(auth.holds_checked, ["acme v. firm"]);

    // Gone from search (and from the index, not just the results); the rest is found.
    let reader = ArchiveReader::open(&s.dir, &s.master).unwrap();
    assert!(reader.search("quarterly", 10).unwrap().is_empty());
    assert!(reader.search("merger", 10).unwrap().is_empty());
    assert_eq!(reader.search("research", 10).unwrap().len(), 1);
    let cov = index::coverage(&s.dir.join("index"), &s.master, &reader.archive_id(), true).unwrap();
    assert_eq!(cov.docs, 1, "the shredded messages' documents are deleted");

    // A key removed by hand is still tampering.
    std::fs::remove_file(s.dir.join("keys/segment-0000000003.key")).unwrap();
    let r = s.verify();
    assert!(
        r.problems
            .iter()
            .any(|p| p.segment == Some(3) && p.what.contains("without a signed shred record")),
        "{:#?}",
        r.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_retention_authority_fails_verify() {
    let s = Setup::new();
    let a = s.open();
    a.append(msg("alice@x", "bob@x", "hello", ""))
        .await
        .unwrap();
    a.close().await.unwrap();
    let a = s.open();
    // A shred that claims retention but was not due: written before its stated due date.
    let future = Timestamp(Timestamp::now().0 + 86_400_000);
    let authority = retention::ExpiryAuthority {
        rule: "custos:retention".into(),
        class: "default".into(),
        retention: "1h".into(),
        first_seq: 1,
        last_seq: 1,
        records: 1,
        newest: Timestamp::now().to_string(),
        due: future.to_string(),
        holds_checked: Vec::new(),
    };
    a.shred_segment(
        1,
        retention::EXPIRY_REASON,
        &serde_json::to_string(&authority).unwrap(),
        "custos:test",
    )
    .await
    .unwrap();
    a.close().await.unwrap();
    let r = s.verify();
    assert!(
        r.problems
            .iter()
            .any(|p| p.segment == Some(1) && p.what.contains("before the due date")),
        "{:#?}",
        r.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_cut_per_class_and_window() {
    let s = Setup::new();
    let mut cfg = ArchiveConfig::new(s.dir.clone(), s.master.clone(), s.signing.clone());
    cfg.segment_max_age = std::time::Duration::from_secs(2);
    let a = Archive::open(cfg).unwrap();
    // Start just after a window boundary (windows are aligned to the epoch), so the
    // first three land in one window.
    let into = Timestamp::now().0.rem_euclid(2000) as u64;
    tokio::time::sleep(std::time::Duration::from_millis(2050 - into.min(2000))).await;
    a.append(msg("a@x", "b@x", "one", "")).await.unwrap();
    a.append(msg("a@x", "b@x", "two", "")).await.unwrap();
    a.append(msg("a@x", "b@x", "three", "research"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    a.append(msg("a@x", "b@x", "four", "research"))
        .await
        .unwrap();
    a.close().await.unwrap();
    let reader = ArchiveReader::open(&s.dir, &s.master).unwrap();
    let mut by_segment: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    reader
        .scan(1, |e| {
            if let Some(NewRecord::Message(m)) = e.record.map(|r| r.content) {
                by_segment
                    .entry(e.segment)
                    .or_default()
                    .push(m.body.unwrap_or_default());
            }
            Ok::<(), ReadError>(())
        })
        .unwrap();
    let groups: Vec<Vec<String>> = by_segment.into_values().collect();
    assert_eq!(
        groups,
        [
            vec!["one".to_string(), "two".to_string()],
            vec!["three".to_string()],
            vec!["four".to_string()]
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortening_the_configuration_applies_only_to_records_written_after_it() {
    let s = Setup::new();
    let hour = RetentionPolicy::new(Span::Secs(3600), Default::default()).unwrap();
    let second = RetentionPolicy::new(Span::Secs(1), Default::default()).unwrap();
    let a = s.open();
    a.append(msg("alice@x", "bob@x", "written under an hour", ""))
        .await
        .unwrap();
    a.close().await.unwrap();
    let a = s.open();
    // The first run records the hour in force.
    let r = a
        .run_expiry(&hour, Timestamp::now(), "custos:test", false)
        .await
        .unwrap();
    assert!(r.shredded.is_empty());
    a.close().await.unwrap();

    // An administrator cuts the default to one second and restarts.
    let a = s.open();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = a
        .run_expiry(&second, Timestamp::now(), "custos:test", false)
        .await
        .unwrap();
    assert!(
        r.shredded.is_empty(),
        "the old message keeps its hour: {r:#?}"
    );
    assert!(matches!(
        r.plan
            .segments
            .iter()
            .find(|p| p.facts.segment == 1)
            .unwrap()
            .decision,
        Decision::Keep(Keep::NotDue { .. })
    ));
    // What is written from now on is kept a second.
    a.append(msg("alice@x", "bob@x", "written under a second", ""))
        .await
        .unwrap();
    a.close().await.unwrap();
    let a = s.open();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = a
        .run_expiry(&second, Timestamp::now(), "custos:test", false)
        .await
        .unwrap();
    assert_eq!(r.shredded.len(), 1, "{r:#?}");
    let newer = r.shredded[0].0;
    assert!(newer > 1);

    // A shred of the old segment claiming the shorter retention is caught by verify.
    let plan = a.reader().expiry_plan(&hour, Timestamp::now()).unwrap();
    let old = plan.segments.iter().find(|p| p.facts.segment == 1).unwrap();
    shred_as_expired_after_a_second(&a, &old.facts, "default").await;
    a.close().await.unwrap();
    let v = s.verify();
    let forged: Vec<&Problem> = v.problems.iter().filter(|p| p.segment == Some(1)).collect();
    assert!(
        forged.len() == 1 && forged[0].what.contains("was kept 1h"),
        "{:#?}",
        v.problems
    );
    assert!(
        v.problems.iter().all(|p| p.segment == Some(1)),
        "the legitimate shred passes: {:#?}",
        v.problems
    );
}

/// An administrator shreds the segment that holds a legal hold, through the archive's
/// own API, with an authority every stated figure of which is consistent: its seqs and
/// count, its newest time, a due date one second after it, written after that date.
/// Only its class is made up, so no recorded policy would have bounded its retention;
/// with the hold's record gone, the next expiry would shred what the hold kept.
/// `verify` must refuse a retention shred whose class no recorded policy names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_shred_naming_a_class_no_policy_gives_fails_verify() {
    let s = Setup::new();
    let hour = RetentionPolicy::new(Span::Secs(3600), Default::default()).unwrap();
    let a = s.open();
    let hold = HoldSpec::new("acme v. firm", &["frank@x".into()], None, None, None).unwrap();
    a.append(audit(HOLD_PLACE, serde_json::to_string(&hold).unwrap()))
        .await
        .unwrap();
    a.append(msg("erin@x", "frank@x", "merger plan", ""))
        .await
        .unwrap();
    a.close().await.unwrap();
    let a = s.open();
    // A run records the policy in force, and shreds nothing.
    let r = a
        .run_expiry(&hour, Timestamp::now(), "custos:test", false)
        .await
        .unwrap();
    assert!(r.shredded.is_empty(), "{r:#?}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let plan = a.reader().expiry_plan(&hour, Timestamp::now()).unwrap();
    let held = plan.segments.iter().find(|p| p.facts.segment == 1).unwrap();
    shred_as_expired_after_a_second(&a, &held.facts, "x").await;
    a.close().await.unwrap();
    let v = s.verify();
    let forged: Vec<&Problem> = v.problems.iter().filter(|p| p.segment == Some(1)).collect();
    assert!(
        forged.len() == 1 && forged[0].what.contains("no retention policy recorded"),
        "{:#?}",
        v.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_refuses_to_shred_an_archive_that_does_not_verify() {
    let s = Setup::new();
    let a = s.open();
    let hold = HoldSpec::new("m", &["bob@x".into()], None, None, None).unwrap();
    a.append(audit(HOLD_PLACE, serde_json::to_string(&hold).unwrap()))
        .await
        .unwrap();
    a.append(msg("alice@x", "bob@x", "held", "")).await.unwrap();
    a.close().await.unwrap();
    // Someone removes the key of the segment holding the hold record.
    std::fs::remove_file(s.dir.join("keys/segment-0000000001.key")).unwrap();
    let a = s.open();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = a
        .run_expiry(&policy(), Timestamp::now(), "custos:test", false)
        .await;
    assert!(matches!(r, Err(ExpiryError::Unverified(_))), "{r:?}");
    assert!(s.dir.join("keys/segment-0000000002.key").exists());
    a.close().await.unwrap();
}
