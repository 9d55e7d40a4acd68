//! Hot reload: a good file is swapped in atomically, a bad one leaves the old rules in
//! force, and the watcher notices edits to the rules and lexicon files.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use custos_policy::{Action, PolicyHandle, Subject, Watcher};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("custos-policy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        TempDir(dir)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BLOCK_SECRET: &str = "[[rule]]\nid='secret'\nwhen={body={regex='secret'}}\naction='block'\n";
const FLAG_SECRET: &str = "[[rule]]\nid='secret'\nwhen={body={regex='secret'}}\naction='flag'\n";

fn action(h: &PolicyHandle, body: &str) -> Action {
    h.current()
        .evaluate(&Subject::outbound_chat("a@x.test", "b@y.test", body))
        .action
}

#[test]
fn reload_swaps_good_files_and_keeps_old_rules_on_a_bad_one() {
    let dir = TempDir::new("reload");
    let path = dir.write("rules.toml", BLOCK_SECRET);
    let h = PolicyHandle::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.path(), path.as_path());
    assert_eq!(action(&h, "a secret"), Action::Block);

    // A snapshot taken before a reload keeps judging by the rules it was taken with.
    let before = h.current();
    dir.write("rules.toml", FLAG_SECRET);
    let summary = h.reload().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.summary.rules, 1);
    assert_eq!(action(&h, "a secret"), Action::Flag);
    assert_eq!(
        before
            .evaluate(&Subject::outbound_chat("a@x.test", "b@y.test", "secret"))
            .action,
        Action::Block
    );

    dir.write(
        "rules.toml",
        "[[rule]]\nid='secret'\nwhen={body={regex='('}}\naction='block'\n",
    );
    let err = h.reload().expect_err("bad regex must be refused");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:3: bad regex", path.display())),
        "{msg}"
    );
    assert_eq!(
        action(&h, "a secret"),
        Action::Flag,
        "old rules stay in force"
    );

    std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(h.reload().is_err(), "missing file refused");
    assert_eq!(action(&h, "a secret"), Action::Flag);

    // Clones share the slot.
    let clone = h.clone();
    dir.write("rules.toml", BLOCK_SECRET);
    clone.reload().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(action(&h, "a secret"), Action::Block);
}

fn wait_for<T>(rx: &mpsc::Receiver<T>, within: Duration) -> T {
    rx.recv_timeout(within)
        .unwrap_or_else(|e| panic!("no reload within {within:?}: {e}"))
}

#[test]
fn watcher_reloads_on_rules_and_lexicon_changes() {
    let dir = TempDir::new("watch");
    dir.write("terms.txt", "alpha\n");
    let rules = "[[lexicon]]\nid='l'\nfile='terms.txt'\n[[rule]]\nid='r'\nwhen={body={lexicon='l'}}\naction='block'\n";
    let path = dir.write("rules.toml", rules);
    let h = PolicyHandle::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = mpsc::channel();
    let w = Watcher::spawn(h.clone(), Duration::from_millis(20), move |r| {
        let _ = tx.send(r.map_err(|e| e.to_string()));
    })
    .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(action(&h, "beta"), Action::Allow);
    // Same length, different content: caught by the hash even within one mtime tick.
    dir.write("terms.txt", "beta!\n");
    dir.write("terms.txt", "beta\n");
    assert!(wait_for(&rx, Duration::from_secs(5)).is_ok());
    let deadline = Instant::now() + Duration::from_secs(5);
    while action(&h, "beta") != Action::Block && Instant::now() < deadline {
        let _ = rx.recv_timeout(Duration::from_millis(50));
    }
    assert_eq!(action(&h, "beta"), Action::Block);

    dir.write("rules.toml", "mode = 'sideways'\n");
    let err = wait_for(&rx, Duration::from_secs(5)).expect_err("bad file reported");
    assert!(err.contains(":1: mode `sideways`"), "{err}");
    assert_eq!(action(&h, "beta"), Action::Block, "old rules stay in force");

    w.stop();
    dir.write("rules.toml", FLAG_SECRET);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "stopped watcher is quiet"
    );
    assert_eq!(action(&h, "beta"), Action::Block);
}

#[test]
fn open_reports_a_missing_file() {
    let err = PolicyHandle::open(Path::new("/nonexistent/custos/rules.toml")).expect_err("missing");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/custos/rules.toml: cannot read"),
        "{err}"
    );
}
