//! Appends under load until killed, printing `acked <seq>` after each durable
//! append. Used by the kill -9 test: `archive-crash-child DIR SIGNING_KEY_FILE`
//! with the master key in `CUSTOS_MASTER_KEY`. Stops by itself after
//! `CUSTOS_CHILD_MAX_SECS` (default 30) so a lost parent never leaves it running.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io::Write;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use custos_archive::{
    load_signing_key, Archive, ArchiveConfig, MasterKey, MessageRecord, NewRecord, SessionId,
};

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: the archive's futures are woken by the writer thread.
fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(signing)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: archive-crash-child DIR SIGNING_KEY_FILE");
        std::process::exit(2);
    };
    let max = std::env::var("CUSTOS_CHILD_MAX_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30u64);
    let run = || -> Result<(), String> {
        let master = MasterKey::from_base64_env().map_err(|e| e.to_string())?;
        let signing = load_signing_key(std::path::Path::new(signing)).map_err(|e| e.to_string())?;
        let mut cfg = ArchiveConfig::new(dir.into(), master, signing);
        cfg.segment_max_bytes = 256 << 10;
        cfg.checkpoint_every = 50;
        let archive = Archive::open(cfg).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(max);
        let workers: Vec<_> = (0..8)
            .map(|t| {
                let a = archive.clone();
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        i += 1;
                        let rec = NewRecord::Message(MessageRecord {
                            session: SessionId(format!("s{t}")),
                            id: Some(format!("{t}-{i}")),
                            stanza: b"<message/>".to_vec(),
                            ..MessageRecord::chat(
                                format!("user{t}@example.test/desk"),
                                "bob@example.test",
                                format!("crash test message {i} from worker {t}"),
                            )
                        });
                        match block_on(a.append(rec)) {
                            Ok(r) => {
                                let mut out = std::io::stdout().lock();
                                let _ = writeln!(out, "acked {}", r.seq.0);
                                let _ = out.flush();
                            }
                            Err(e) => {
                                eprintln!("append failed: {e}");
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        block_on(archive.close()).map_err(|e| e.to_string())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
