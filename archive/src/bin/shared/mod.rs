//! What the benchmark binaries share.

use std::sync::Arc;

/// Runs a future to completion on this thread. The archive's futures are completed
/// by its writer thread, so no runtime is needed.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// This process's resident memory, as `/proc/self/status` gives it: the whole, its
/// anonymous part (heap, private copies) and its file-backed part (mapped files' pages
/// in memory), in MiB.
#[allow(dead_code)] // Not every benchmark prints it.
pub fn resident() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mib = |key: &str| -> String {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or("?".into(), |kib| format!("{:.0}", kib as f64 / 1024.0))
    };
    format!(
        "resident {} MiB (anonymous {}, file-backed {})",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:")
    )
}
