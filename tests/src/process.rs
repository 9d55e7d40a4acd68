//! Stopping child processes by pid, with a bound, and reading their threads.
//!
//! Every process the harness starts is stopped the same way: SIGTERM so it
//! can flush logs and remove its pidfile, then SIGKILL if it is still alive
//! after a grace period. Only the pid we spawned is signalled, never a name.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a child gets between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// Sends SIGTERM to `pid`, then polls `exited` every 10 ms; after `grace`
/// sends SIGKILL and polls for up to another second. Returns whether the
/// process was seen to exit.
///
/// `exited` must reap the child (e.g. `Child::try_wait`) so the pid is not
/// reused while we still hold it.
pub fn terminate(pid: u32, grace: Duration, mut exited: impl FnMut() -> bool) -> bool {
    if exited() {
        return true;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let pid = Pid::from_raw(raw);
    let _ = kill(pid, Signal::SIGTERM);
    if poll(grace, &mut exited) {
        return true;
    }
    let _ = kill(pid, Signal::SIGKILL);
    poll(Duration::from_secs(1), &mut exited)
}

fn poll(limit: Duration, exited: &mut impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if exited() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops a `std::process::Child` with [`terminate`].
pub fn terminate_child(child: &mut std::process::Child, grace: Duration) -> bool {
    let pid = child.id();
    terminate(pid, grace, || {
        matches!(child.try_wait(), Ok(Some(_)) | Err(_))
    })
}

/// The last `max` bytes of `text`, cut at a character boundary, for error
/// messages that quote a log.
pub fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or_default().to_string()
}

/// A finished command's stdout then stderr, as text (for assertion messages).
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every thread of `pid`: its id, its name and its nice value (field 19 of
/// `/proc/PID/task/TID/stat`).
pub fn thread_niceness(pid: u32) -> Result<Vec<(u32, String, i32)>, crate::rig::BoxError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A thread may end between the listing and the read.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(entry.path().join("comm")),
            std::fs::read_to_string(entry.path().join("stat")),
        ) else {
            continue;
        };
        // The name in `stat` may hold spaces and parentheses: fields follow the last ')'.
        let after = stat.rsplit_once(')').ok_or("stat without a name")?.1;
        let nice = after
            .split_whitespace()
            .nth(16)
            .ok_or("stat too short")?
            .parse()?;
        out.push((tid, comm.trim_end().to_string(), nice));
    }
    Ok(out)
}

/// The nice value of process `pid`'s main thread, from [`thread_niceness`]'s list.
pub fn main_niceness(
    threads: &[(u32, String, i32)],
    pid: u32,
) -> Result<i32, crate::rig::BoxError> {
    threads
        .iter()
        .find(|(tid, _, _)| *tid == pid)
        .map(|(_, _, n)| *n)
        .ok_or_else(|| format!("no main thread among {threads:?}").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    #[test]
    fn sigterm_stops_a_sleeping_child() -> std::io::Result<()> {
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let started = Instant::now();
        assert!(terminate_child(&mut child, Duration::from_secs(2)));
        assert!(started.elapsed() < Duration::from_secs(2));
        Ok(())
    }

    #[test]
    fn sigkill_after_grace_when_sigterm_is_ignored() -> std::io::Result<()> {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        // Wait until the trap is installed before signalling.
        let mut out = child.stdout.take();
        if let Some(out) = out.as_mut() {
            use std::io::Read;
            let mut buf = [0u8; 6];
            out.read_exact(&mut buf)?;
        }
        let started = Instant::now();
        assert!(terminate_child(&mut child, Duration::from_millis(300)));
        assert!(started.elapsed() >= Duration::from_millis(300));
        let status = child.wait()?;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        Ok(())
    }

    proptest! {
        #[test]
        fn tail_is_a_suffix_within_bound(s in "\\PC{0,64}", max in 0usize..80) {
            let t = tail(&s, max);
            prop_assert!(s.ends_with(&t));
            prop_assert!(t.len() <= max);
            if s.len() <= max {
                prop_assert_eq!(t, s);
            }
        }
    }
}
