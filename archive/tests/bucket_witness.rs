//! The witnesses of an archive kept in a bucket, against a real S3 server with Object
//! Lock: moto's server mode from `<workspace>/.venv` (`bash scripts/setup.sh`) or
//! `$CUSTOS_TEST_PYTHON`; fails, naming the script, if it is missing.
//!
//! The bucket's witness against someone who can write to the bucket what the object sync
//! itself writes (`s3:PutObject`, `s3:DeleteObject` without a version) and who has cut
//! the tail of the active segment, which is not in the bucket yet. Object Lock keeps
//! every locked version of a witness entry; it does not stop a new current version being
//! put over one, nor a delete marker. Neither may hide the cut.
//!
//! A witness directory shared by the nodes of one bucket: each node's file is accepted
//! by the others' `verify`, and any other archive's file is still reported.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custos_archive::bucket::s3::PutOptions;
use custos_archive::bucket::{Credentials, Endpoint, LockMode, ObjectStoreConfig, Remote};
use custos_archive::retention::RetentionPolicy;
use custos_archive::segment::{parse_frame, Frame, Parsed, HEADER_LEN};
use custos_archive::witness::WitnessEntry;
use custos_archive::*;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CUSTOS_TEST_PYTHON") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// moto on a loopback port of its own, stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(log: &Path) -> Moto {
        let py = python();
        let probe = Command::new(&py)
            .args(["-c", "import moto.server"])
            .output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "{} cannot import moto: run `bash scripts/setup.sh` (or set CUSTOS_TEST_PYTHON): {probe:?}",
            py.display()
        );
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(&py)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let moto = Moto { child, port };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not listen on {port}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    fn remote(&self, bucket: &str, node: Option<&str>) -> Remote {
        Remote::connect(&ObjectStoreConfig {
            endpoint: Endpoint {
                url: format!("http://127.0.0.1:{}", self.port),
                bucket: bucket.into(),
                region: "us-east-1".into(),
                path_style: true,
            },
            credentials: Credentials {
                access_key: "custos-test".into(),
                secret_key: zeroize::Zeroizing::new("custos-test-secret".into()),
            },
            prefix: "custos/".into(),
            node: node.map(str::to_string),
            lock_mode: LockMode::Compliance,
            keep_local: true,
            cache_bytes: 64 << 20,
        })
        .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn note(i: u64) -> NewRecord {
    NewRecord::Event(EventRecord::Audit {
        actor: "officer".into(),
        action: "hold.place".into(),
        detail: format!("{{\"matter\":\"m{i}\"}}"),
    })
}

/// A master and a signing key made in `root`, and the signing key's public half.
fn keys(root: &Path) -> (MasterKey, SigningKey, VerifyingKey) {
    let c = keys_init(&root.join("m.key"), &root.join("s.key")).unwrap();
    let master = MasterKey::from_file(&c.master_key).unwrap();
    let signing = load_signing_key(&c.signing_key).unwrap();
    (master, signing, c.verifying_key)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

struct Cut {
    _tmp: tempfile::TempDir,
    _moto: Moto,
    dir: PathBuf,
    remote: Remote,
    master: MasterKey,
    public: VerifyingKey,
    /// The bucket's witness entries before the cut: the first, which the cut log still
    /// reaches, and the newest, which it does not.
    first: WitnessEntry,
    newest: WitnessEntry,
}

/// An archive whose object sync witnessed two checkpoints of its active segment in the
/// bucket (one after 4 records, one after 10), then stopped; then the active segment cut
/// back to the first of them and the index rebuilt to match.
fn cut_after_two_syncs(bucket: &str) -> Cut {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(&tmp.path().join("moto.log"));
    let remote = moto.remote(bucket, None);
    remote.client.create_bucket_with_lock().unwrap();
    let dir = tmp.path().join("archive");
    let (master, signing, public) = keys(tmp.path());
    let rt = runtime();
    let policy = RetentionPolicy::keep_forever();
    rt.block_on(async {
        let mut cfg = ArchiveConfig::new(dir.clone(), master.clone(), signing);
        cfg.checkpoint_every = 2;
        cfg.object_store = Some(remote.clone());
        let a = Archive::open(cfg).unwrap();
        for i in 0..4 {
            a.append(note(i)).await.unwrap();
        }
        a.sync_objects(&remote, &policy, Timestamp::now())
            .await
            .unwrap();
        for i in 4..10 {
            a.append(note(i)).await.unwrap();
        }
        a.sync_objects(&remote, &policy, Timestamp::now())
            .await
            .unwrap();
        a.close().await.unwrap();
    });
    let (entries, bad) = bucket::bucket_witness(&remote).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (first, newest) = (entries[0].clone(), entries[1].clone());
    assert_eq!(first.segment, newest.segment, "both in the active segment");
    let before = check(&dir, &remote, &master, &public);
    assert!(before.is_clean(), "{:#?}", before.problems);

    // Root cuts the segment (never stored in the bucket) back to the first witnessed
    // checkpoint and rebuilds the index to match.
    let seg = dir
        .join("segments")
        .join(format!("seg-{:010}.log", first.segment));
    let bytes = std::fs::read(&seg).unwrap();
    let mut at = HEADER_LEN;
    let cut = loop {
        match parse_frame(&bytes, at) {
            Parsed::Frame(Frame::Checkpoint(cp), next) if cp.seq == first.checkpoint.seq => {
                break next
            }
            Parsed::Frame(_, next) => at = next,
            _ => panic!("no checkpoint at seq {}", first.checkpoint.seq),
        }
    };
    let mut p = std::fs::metadata(&seg).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    p.set_readonly(false);
    std::fs::set_permissions(&seg, p).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    reindex(&dir, &master, |_, _| {}).unwrap();
    Cut {
        _tmp: tmp,
        _moto: moto,
        dir,
        remote,
        master,
        public,
        first,
        newest,
    }
}

/// What `custos verify` checks of a chain with a bucket witness: the log, then every
/// entry of the bucket's witness against it (`custos/src/archive_cmds.rs`).
fn check(dir: &Path, remote: &Remote, master: &MasterKey, public: &VerifyingKey) -> VerifyReport {
    let storage = bucket::storage_for(dir, Some(remote));
    let mut r = verify_in(dir, storage.as_ref(), Some(master), public, |_, _| {});
    let (entries, bad) = bucket::bucket_witness(remote).unwrap();
    for what in bad {
        r.problems.push(Problem {
            segment: None,
            offset: None,
            seq: None,
            what: format!("bucket witness: {what}"),
        });
    }
    check_witness_entries(&mut r, &entries, public, false);
    r
}

/// Whether `r` names the records cut: those after the first witnessed checkpoint, up to
/// the newest.
fn cut_is_named(c: &Cut, r: &VerifyReport) -> bool {
    let (from, to) = (c.first.checkpoint.seq + 1, c.newest.checkpoint.seq);
    r.problems.iter().any(|p| {
        p.seq == Some(to)
            && p.what.contains("witnessed checkpoint missing")
            && p.what
                .contains(&format!("records {from}..={to} were removed"))
    })
}

#[test]
fn a_new_version_of_a_witness_entry_does_not_hide_a_cut() {
    let c = cut_after_two_syncs("witness-reversioned");
    assert!(
        cut_is_named(&c, &check(&c.dir, &c.remote, &c.master, &c.public)),
        "the cut is found while the bucket is untouched"
    );
    // A new current version of the newest entry's object, holding the first entry's
    // genuine signed bytes: a read of current versions now sees nothing past the cut.
    let key = c
        .remote
        .key(&bucket::witness_object_name(c.newest.checkpoint.seq));
    c.remote
        .client
        .put_object(&key, &c.first.to_bytes(), &PutOptions::default())
        .unwrap();
    let versions = c.remote.client.list_versions(&key).unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    let r = check(&c.dir, &c.remote, &c.master, &c.public);
    assert!(cut_is_named(&c, &r), "{:#?}", r.problems);
    assert!(
        r.problems.iter().any(|p| p.what.contains(&key)
            && versions.iter().all(|v| p.what.contains(&v.version_id))
            && p.what.contains("hold different entries")),
        "{:#?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| p.what.contains(&key)
            && p.what.contains(&format!(
                "holds the entry of seq {}, not the one its name says",
                c.first.checkpoint.seq
            ))),
        "{:#?}",
        r.problems
    );
}

#[test]
fn a_delete_marker_over_a_witness_entry_does_not_hide_a_cut() {
    let c = cut_after_two_syncs("witness-marked");
    let key = c
        .remote
        .key(&bucket::witness_object_name(c.newest.checkpoint.seq));
    // Without a version, a delete is allowed under Object Lock: it adds a marker.
    c.remote.client.delete_object(&key, None, false).unwrap();
    let marker = c
        .remote
        .client
        .list_versions(&key)
        .unwrap()
        .into_iter()
        .find(|v| v.delete_marker)
        .unwrap();
    assert!(
        !c.remote
            .client
            .list(&c.remote.key(bucket::WITNESS_FOLDER))
            .unwrap()
            .iter()
            .any(|(k, _)| *k == key),
        "the marker hides the entry from a plain listing"
    );
    let r = check(&c.dir, &c.remote, &c.master, &c.public);
    assert!(cut_is_named(&c, &r), "{:#?}", r.problems);
    assert!(
        r.problems.iter().any(|p| p.what.contains(&key)
            && p.what
                .contains(&format!("delete marker {}", marker.version_id))),
        "{:#?}",
        r.problems
    );
}

/// Nodes n1 and n2 of one bucket keep their witness files in one directory. n2's chain
/// is in the bucket (a sealed segment stored, so its `archive.meta` too); n1 starts
/// beside it, told the directory is shared. n1's verify takes n2's file for what it is;
/// a third archive's file, not a chain of the bucket, is a problem all the same.
#[test]
fn nodes_of_one_bucket_may_share_a_witness_directory_and_no_one_else() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(&tmp.path().join("moto.log"));
    let (n1, n2) = (
        moto.remote("shared-witness", Some("n1")),
        moto.remote("shared-witness", Some("n2")),
    );
    n1.client.create_bucket_with_lock().unwrap();
    let witness = tmp.path().join("witness");
    let (master, signing, public) = keys(tmp.path());
    let rt = runtime();
    let config = |dir: &Path, remote: Option<&Remote>, shared: bool| {
        let mut cfg = ArchiveConfig::new(dir.to_path_buf(), master.clone(), signing.clone());
        cfg.witness = Some(witness.clone());
        cfg.witness_shared = shared;
        cfg.object_store = remote.cloned();
        cfg
    };
    let session = |cfg: ArchiveConfig, remote: Option<&Remote>| {
        let a = Archive::open(cfg).unwrap();
        rt.block_on(async {
            for i in 0..3 {
                a.append(note(i)).await.unwrap();
            }
            if let Some(r) = remote {
                a.sync_objects(r, &RetentionPolicy::keep_forever(), Timestamp::now())
                    .await
                    .unwrap();
            }
            a.close().await.unwrap();
        });
    };
    let (dir1, dir2) = (tmp.path().join("n1"), tmp.path().join("n2"));
    // The second session's sync stores the first session's sealed segment.
    session(config(&dir2, Some(&n2), false), None);
    session(config(&dir2, Some(&n2), false), Some(&n2));
    assert!(n2.has_chain().unwrap());

    // Not told the directory is shared, n1 does not start its witness beside n2's.
    match Archive::open(config(&dir1, Some(&n1), false)) {
        Err(OpenError::Log(log::LogOpenError::Witness(witness::WitnessError::Occupied {
            ..
        }))) => {}
        other => panic!("n1 started beside n2's witness: {other:?}"),
    }
    session(config(&dir1, Some(&n1), true), None);
    bucket::register(&dir1, n1.clone());
    let r = verify_witnessed(&dir1, Some(&master), &public, &witness, |_, _| {});
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert!(
        r.notes.iter().any(|n| n.contains("node n2's chain")),
        "{:?}",
        r.notes
    );

    // An archive that is no chain of the bucket, started beside them.
    let stranger = tmp.path().join("stranger");
    session(config(&stranger, None, true), None);
    let theirs = verify_witnessed(&stranger, Some(&master), &public, &witness, |_, _| {})
        .archive_id
        .unwrap();
    let r = verify_witnessed(&dir1, Some(&master), &public, &witness, |_, _| {});
    let named: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.what.contains(&format!("{theirs}.witness")))
        .collect();
    assert_eq!(named.len(), 1, "{:#?}", r.problems);
    assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
}
