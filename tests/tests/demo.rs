//! The README's first command must keep working: run the demo in check mode (real
//! Prosody, Custos with archive, policy and web UI, real clients) and require it to pass.

use std::process::Command;

#[test]
fn the_demo_runs_end_to_end() {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("custos-demo"))
        .expect("target directory");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(&bin)
        .arg("--check")
        .arg("--dir")
        .arg(dir.path().join("demo"))
        .arg("--web-port")
        .arg("0")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (build it with cargo build --workspace --bins)",
                bin.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("refused: <policy-violation/> Card numbers may not be sent over chat."),
        "{stdout}"
    );
    assert!(stdout.contains("Project ██████ review"), "{stdout}");
    assert!(stdout.contains("recorded by Example Corp"), "{stdout}");
    assert!(stdout.contains("demo check passed"), "{stdout}");
}
