//! Child processes of the harness (etcd, kube-apiserver, CAPI managers): logs to a file, killed
//! and reaped on drop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::ControlPlaneError;

/// How much of a log is shown in startup errors.
const LOG_TAIL_LINES: usize = 40;

/// A running child process whose stdout and stderr go to `log`.
///
/// It runs in its own process group so that [`Drop`] can kill everything it may have started.
/// Dropping kills with SIGKILL and reaps synchronously: a test's ports and data dirs are free
/// again as soon as its `ControlPlane` is gone, which matters for the temp dir removal that
/// follows, and it also runs while a panicking test unwinds.
#[derive(Debug)]
pub(crate) struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ManagedProcess {
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &Path)],
        log: PathBuf,
    ) -> Result<Self, ControlPlaneError> {
        let io_err = |source| ControlPlaneError::ProcessSpawnFailed {
            name: name.to_string(),
            program: program.to_path_buf(),
            source,
        };
        let out = File::create(&log).map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
        // is async-signal-safe. PR_SET_PDEATHSIG makes the kernel kill the child when the thread
        // that spawned it dies, so nothing outlives a test binary that is killed (Ctrl-C reaches
        // only the foreground process group, which these children have left; SIGKILL of the test
        // binary skips every Drop).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(io_err)?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails with the log tail if the process has exited: used while waiting for readiness, so
    /// a crash is reported at once instead of after the timeout.
    pub(crate) fn ensure_running(&mut self) -> Result<(), ControlPlaneError> {
        match self.exited() {
            Some(status) => Err(ControlPlaneError::ProcessExited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
                log_tail: self.log_tail(),
            }),
            None => Ok(()),
        }
    }

    /// The last lines of the log.
    pub(crate) fn log_tail(&self) -> String {
        tail_of_file(&self.log, LOG_TAIL_LINES)
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory-safety preconditions. The child is its own process group
        // leader (process_group(0)) and is not reaped yet, so -pid names its group and nothing
        // else.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a file, read from at most its last 64 KiB.
pub(crate) fn tail_of_file(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `n` distinct free TCP ports on 127.0.0.1. All listeners are held until every port is chosen
/// so one call never returns the same port twice; another process can still take a port before
/// our child binds it, which startup then reports as a process exit with the log tail.
pub(crate) fn free_loopback_ports(n: usize) -> Result<Vec<u16>, ControlPlaneError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Below the kernel's ephemeral range (32768-60999 by default): a port picked here and
    // released before its server binds it cannot meanwhile become the source port of one of
    // the many outgoing connections a test makes, which is how a CAPI manager's webhook bind
    // once failed in CI ("address already in use" on a port picked with bind(0)).
    const FIRST: u32 = 20000;
    const SPAN: u32 = 32768 - FIRST;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Each test process starts at its own place, so concurrent test binaries rarely meet.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..SPAN {
        if listeners.len() == n {
            break;
        }
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        // All interfaces: some servers (the CAPI managers' webhooks) bind `:port`.
        if let Ok(l) = std::net::TcpListener::bind(("0.0.0.0", port)) {
            listeners.push(l);
        }
    }
    if listeners.len() < n {
        return Err(ControlPlaneError::NoFreePort(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("fewer than {n} free ports in {FIRST}..32768"),
        )));
    }
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ControlPlaneError::NoFreePort)
}
