//! Per-core serving, the nginx worker model: one thread per core, each with
//! its own single-threaded tokio runtime and its own accept loop on the same
//! listening socket. A connection then lives on the thread that accepted it,
//! so serving it never wakes another thread; on a loaded 2-core machine the
//! cross-thread wake-ups of a work-stealing runtime were a large share of
//! the CPU time of small responses.
//!
//! Shared state stays behind `Arc`; background work (probes, heartbeats,
//! prefill) stays on the caller's runtime.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

/// How many serving threads to run when nothing says otherwise: one per
/// available core, or `SVC_SERVE_THREADS` when set to a number above 0.
pub fn default_threads() -> usize {
    std::env::var("SVC_SERVE_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Tells one serving thread that shutdown has begun: stop accepting, finish
/// what is in flight, return.
#[derive(Clone)]
pub struct Stop {
    rx: watch::Receiver<bool>,
}

impl Stop {
    /// Resolves once shutdown has begun (at once if it already has).
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    /// Whether shutdown has begun.
    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow()
    }
}

/// What one serving thread reports when it ends.
type Outcome = (usize, io::Result<()>);

/// Sends the thread's outcome even if it panics.
struct Report {
    index: usize,
    tx: mpsc::UnboundedSender<Outcome>,
    sent: bool,
}

impl Report {
    fn send(mut self, result: io::Result<()>) {
        self.sent = true;
        let _ = self.tx.send((self.index, result));
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.tx.send((self.index, Err(io::Error::other("serving thread panicked"))));
        }
    }
}

/// Serves `listener` on `threads` threads (at least one), each running
/// `serve(its_listener, stop)` on its own current-thread runtime, until
/// `shutdown` resolves; then every thread is told to stop, and this returns
/// once all of them have returned (each finishes its in-flight requests
/// first, as its `serve` future decides). If a thread fails before shutdown,
/// the others are stopped too and the first error is returned.
///
/// `name` names the threads (`{name}-0`, `{name}-1`, ...). The listener is
/// shared by duplicating its descriptor: the kernel hands each connection to
/// whichever thread accepts first, so an idle thread takes the next one.
pub async fn per_core<F, Fut>(
    name: &str,
    listener: std::net::TcpListener,
    threads: usize,
    shutdown: impl Future<Output = ()>,
    serve: F,
) -> io::Result<()>
where
    F: Fn(tokio::net::TcpListener, Stop) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + 'static,
{
    listener.set_nonblocking(true)?;
    let threads = threads.max(1);
    let serve = std::sync::Arc::new(serve);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
    let mut handles: Vec<JoinHandle<()>> = Vec::with_capacity(threads);
    let mut spawn_error = None;
    for index in 0..threads {
        let socket = match listener.try_clone() {
            Ok(s) => s,
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        };
        let serve = std::sync::Arc::clone(&serve);
        let stop = Stop { rx: stop_rx.clone() };
        let report = Report { index, tx: done_tx.clone(), sent: false };
        let spawned = std::thread::Builder::new().name(format!("{name}-{index}")).spawn(move || {
            let result = run_thread(socket, stop, move |l, s| serve(l, s));
            report.send(result);
        });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        }
    }
    drop(done_tx);
    drop(listener);
    let running = handles.len();
    let mut first_error = spawn_error;
    let mut finished = 0;
    if first_error.is_none() {
        let mut shutdown = std::pin::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => {}
            Some((index, result)) = done_rx.recv() => {
                finished += 1;
                first_error = Some(match result {
                    Err(e) => e,
                    Ok(()) => io::Error::other(format!("serving thread {index} ended before shutdown")),
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    while finished < running {
        let Some((_, result)) = done_rx.recv().await else { break };
        finished += 1;
        if let (Err(e), None) = (result, &first_error) {
            first_error = Some(e);
        }
    }
    // Every thread has reported, so these joins return at once.
    for h in handles {
        let _ = h.join();
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn run_thread<Fut>(
    socket: std::net::TcpListener,
    stop: Stop,
    serve: impl FnOnce(tokio::net::TcpListener, Stop) -> Fut,
) -> io::Result<()>
where
    Fut: Future<Output = io::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(socket)?;
        serve(listener, stop).await
    });
    // Dropping the runtime here ends whatever its tasks left behind (a
    // connection past its drain period) before the caller is told we are done.
    drop(runtime);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers each connection with the name of the thread that accepted it.
    async fn echo_thread_name(listener: tokio::net::TcpListener, stop: Stop) -> io::Result<()> {
        let mut stopped = std::pin::pin!(stop.signal());
        loop {
            tokio::select! {
                () = &mut stopped => return Ok(()),
                accepted = listener.accept() => {
                    let (mut tcp, _) = accepted?;
                    let name = std::thread::current().name().unwrap_or("").to_owned();
                    tokio::spawn(async move {
                        let _ = tcp.write_all(name.as_bytes()).await;
                    });
                }
            }
        }
    }

    async fn read_name(addr: std::net::SocketAddr) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = String::new();
        tcp.read_to_string(&mut s).await.unwrap();
        s
    }

    #[tokio::test]
    async fn every_thread_accepts_and_all_stop_on_shutdown() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let started = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&started);
        let served = tokio::spawn(per_core(
            "test",
            listener,
            2,
            async move {
                let _ = stop_rx.await;
            },
            move |l, s| {
                counted.fetch_add(1, Ordering::SeqCst);
                echo_thread_name(l, s)
            },
        ));
        let mut seen = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // Both threads accept on the one socket; keep connecting until each has answered.
        while seen.len() < 2 && tokio::time::Instant::now() < deadline {
            let names = futures_join(addr, 16).await;
            seen.extend(names);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["test-0", "test-1"]);
        assert_eq!(started.load(Ordering::SeqCst), 2);
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), served).await.unwrap().unwrap().unwrap();
        // The socket is closed once every thread has returned.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    async fn futures_join(addr: std::net::SocketAddr, n: usize) -> Vec<String> {
        let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(read_name(addr))).collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_failing_thread_stops_the_others_and_its_error_is_returned() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            per_core("fail", listener, 2, std::future::pending(), |l, s| async move {
                if std::thread::current().name() == Some("fail-1") {
                    return Err(io::Error::other("thread one broke"));
                }
                echo_thread_name(l, s).await
            }),
        )
        .await
        .expect("per_core returned after the failure");
        assert_eq!(result.unwrap_err().to_string(), "thread one broke");
    }

    #[tokio::test]
    async fn a_panicking_thread_is_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            per_core("panic", listener, 1, std::future::pending(), |_, _| async move {
                panic!("boom");
            }),
        )
        .await
        .expect("per_core returned after the panic");
        assert!(result.unwrap_err().to_string().contains("panicked"));
    }

    #[test]
    fn default_threads_is_at_least_one() {
        assert!(default_threads() >= 1);
    }
}
