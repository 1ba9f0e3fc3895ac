//! What a piece of code logs, for tests of log lines that anyone can cause (they must be
//! throttled: `plinth_types::logthrottle`).

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Runs `f` with a subscriber on this thread only, and returns `f`'s result with the lines
/// logged at WARN and above.
pub fn warnings<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    let (subscriber, out) = subscriber();
    let r = tracing::subscriber::with_default(subscriber, f);
    (r, lines(&out))
}

/// [`warnings`] for a future, polled on this thread (a `#[tokio::test]` runs its tasks on the
/// test's thread, so what they log is caught too).
pub async fn warnings_async<F: Future>(f: F) -> (F::Output, Vec<String>) {
    let (subscriber, out) = subscriber();
    let guard = tracing::subscriber::set_default(subscriber);
    let r = f.await;
    drop(guard);
    (r, lines(&out))
}

type Buffer = Arc<Mutex<Vec<u8>>>;

fn subscriber() -> (impl tracing::Subscriber + Send + Sync, Buffer) {
    let out = Buffer::default();
    let writer = {
        let out = out.clone();
        move || Lines(out.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(writer)
        .finish();
    (subscriber, out)
}

fn lines(out: &Buffer) -> Vec<String> {
    let text = out.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_owned)
        .collect()
}

struct Lines(Buffer);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
