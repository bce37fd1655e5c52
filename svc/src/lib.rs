//! Process plumbing shared by the binaries, so each `main` stays a few lines:
//! logs to stderr (stdout is for results), and a future that resolves on
//! SIGTERM or SIGINT for graceful shutdown (`sd_notify` tells a `Type=notify`
//! systemd unit when the service is ready and when it stops); `serve::per_core` runs a
//! server's accept loop on one single-threaded runtime per core; `zerocopy` sends
//! response bodies that are views of a file with `sendfile`.

pub mod serve;
pub mod zerocopy;

/// Logs to stderr; `RUST_LOG` overrides `default_level`. Under systemd
/// (`JOURNAL_STREAM` set: stderr goes to the journal) lines carry neither
/// colours nor timestamps, since journald stamps each line itself; colours
/// are also off whenever stderr is not a terminal.
pub fn init_tracing(default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !journal && std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).with_ansi(ansi);
    if journal {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}

/// Resolves on the first SIGTERM or SIGINT (and tells systemd the service is
/// stopping). The handlers are installed when this is called, not when the
/// future is first polled, so a signal sent right after `READY=1` is not lost.
/// Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM/SIGINT; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        sd_notify("STOPPING=1");
    }
}

/// Tells systemd the service's state (`READY=1` once it listens, `STOPPING=1`)
/// when a `Type=notify` unit started it (`NOTIFY_SOCKET` set: a path, or
/// `@name` for an abstract socket); does nothing otherwise.
pub fn sd_notify(state: &str) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = UnixDatagram::unbound().and_then(|sock| match target.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        }
        None => sock.send_to(state.as_bytes(), std::path::Path::new(&target)),
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    use std::time::Duration;

    // One test: it sets NOTIFY_SOCKET for the whole process.
    #[test]
    fn sd_notify_reaches_path_and_abstract_sockets() {
        let name = format!("vod-svc-test-{}", std::process::id());
        let abstract_sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("vod-svc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let path_sock = UnixDatagram::bind(&path).unwrap();
        let mut buf = [0u8; 64];
        for (target, sock) in [(format!("@{name}"), &abstract_sock), (path.display().to_string(), &path_sock)] {
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            std::env::set_var("NOTIFY_SOCKET", &target);
            super::sd_notify("READY=1");
            let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("{target}: {e}"));
            assert_eq!(&buf[..n], b"READY=1", "{target}");
        }
        std::env::remove_var("NOTIFY_SOCKET");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
