//! Crypto-shredding is a signed act: `Archive::shred_segment` records why before it
//! destroys a key, and `verify` accepts a missing key only with that record.

#![allow(clippy::unwrap_used)]

use custos_archive::*;

fn note(i: u64) -> NewRecord {
    NewRecord::Event(EventRecord::Audit {
        actor: "officer".into(),
        action: "search".into(),
        detail: format!("query {i}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shredding_is_recorded_before_the_key_goes_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let c = keys_init(
        &tmp.path().join("master.key"),
        &tmp.path().join("signing.key"),
    )
    .unwrap();
    let master = MasterKey::from_file(&c.master_key).unwrap();
    let signing = load_signing_key(&c.signing_key).unwrap();
    let open = || {
        let cfg = ArchiveConfig::new(dir.clone(), master.clone(), signing.clone());
        Archive::open(cfg).unwrap()
    };
    // Segment 1 sealed by the close; the second open writes segment 2.
    let a = open();
    for i in 0..5 {
        a.append(note(i)).await.unwrap();
    }
    a.close().await.unwrap();
    let a = open();
    a.append(note(9)).await.unwrap();

    assert!(matches!(
        a.shred_segment(2, "erasure ordered", "court order 2026-17", "custos")
            .await,
        Err(ShredError::Active(2))
    ));
    assert!(matches!(
        a.shred_segment(7, "erasure ordered", "court order 2026-17", "custos")
            .await,
        Err(ShredError::NoKey(7))
    ));
    let receipt = a
        .shred_segment(1, "erasure ordered", "court order 2026-17", "custos")
        .await
        .unwrap();
    assert!(!dir.join("keys/segment-0000000001.key").exists());
    assert!(matches!(
        a.shred_segment(1, "again", "court order 2026-17", "custos")
            .await,
        Err(ShredError::NoKey(1))
    ));
    // The record is in the chain, readable, naming what allowed it.
    let rec = a
        .reader()
        .records(receipt.seq.0..=receipt.seq.0)
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        rec.content,
        NewRecord::Event(EventRecord::Shred {
            segment: 1,
            reason: "erasure ordered".into(),
            authority: "court order 2026-17".into(),
            actor: "custos".into(),
        })
    );
    a.close().await.unwrap();
    let r = verify(&dir, Some(&master), &c.verifying_key, |_, _| {});
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(r.shredded_records, 5);
}
