//! `beskar7 manager` as a real process against a [`ControlPlane`], as tests and the demo run it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::ControlPlane;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free loopback port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// What [`ManagerProcess`] sets where the released defaults would make tests slow or quiet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tuning {
    /// A 20 s host refresh and debug logs of the controllers.
    Tests,
    /// The flags' defaults and `info` logging.
    Defaults,
}

/// The manager process, killed on drop. Its log (text) is in [`ManagerProcess::log`].
pub struct ManagerProcess {
    child: Child,
    pub log: PathBuf,
    /// Base URLs of its endpoints.
    pub metrics: String,
    pub health: String,
    pub artifacts: String,
    /// What [`ManagerProcess::restart`] starts again.
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl ManagerProcess {
    /// Starts `binary manager` with loopback ports for metrics, probes and the artifact server,
    /// leader election off unless `extra` says otherwise, and a fixed artifact token key.
    pub fn start(
        binary: &Path,
        cp: &ControlPlane,
        extra: &[&str],
    ) -> std::io::Result<ManagerProcess> {
        Self::start_with(binary, cp.kubeconfig_path(), extra, &[])
    }

    /// Like [`ManagerProcess::start`] but with the released defaults where tests tune the
    /// manager: the default host refresh interval and `info` logging (benchmarks measure what a
    /// user runs). Loopback ports, the token key and leader election off stay as in `start`.
    pub fn start_with_defaults(
        binary: &Path,
        cp: &ControlPlane,
        extra: &[&str],
    ) -> std::io::Result<ManagerProcess> {
        Self::start_tuned(binary, cp.kubeconfig_path(), extra, &[], Tuning::Defaults)
    }

    /// Like [`ManagerProcess::start`] with another kubeconfig (e.g. a ServiceAccount token's)
    /// and environment overrides (e.g. a more verbose `RUST_LOG`). The runner's `KUBECONFIG`
    /// and `POD_NAMESPACE` never reach the manager.
    pub fn start_with(
        binary: &Path,
        kubeconfig: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> std::io::Result<ManagerProcess> {
        Self::start_tuned(binary, kubeconfig, extra, env, Tuning::Tests)
    }

    fn start_tuned(
        binary: &Path,
        kubeconfig: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        tuning: Tuning,
    ) -> std::io::Result<ManagerProcess> {
        // A port found free can be taken by another test before the manager binds it: start
        // again on other ports when that is why it stopped.
        let mut attempt = 1;
        loop {
            let mut manager = Self::spawn(binary, kubeconfig, extra, env, tuning)?;
            match manager.wait_listening(std::time::Duration::from_secs(30)) {
                Some(_) if attempt < 5 && manager.log_text().contains("Address already in use") => {
                    attempt += 1;
                }
                _ => return Ok(manager),
            }
        }
    }

    /// Waits until the artifact server, the last listener the manager opens, listens; returns
    /// the exit status if the process stopped first, `None` otherwise (also on timeout).
    fn wait_listening(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        self.wait_listening_since(0, timeout)
    }

    /// [`ManagerProcess::wait_listening`] on the log from byte `from` on.
    fn wait_listening_since(
        &mut self,
        from: usize,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if self
                .log_text()
                .get(from..)
                .unwrap_or_default()
                .contains("artifact server listening")
            {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        None
    }

    fn spawn(
        binary: &Path,
        kubeconfig: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        tuning: Tuning,
    ) -> std::io::Result<ManagerProcess> {
        let dir = tempfile::tempdir()?;
        // Held together so that the three are distinct.
        let listeners: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()?;
        let port = |i: usize| listeners[i].local_addr().map(|a| a.port());
        let (metrics, health, artifacts) = (port(0)?, port(1)?, port(2)?);
        drop(listeners);
        let log = dir.path().join("manager.log");
        std::fs::File::create(&log)?;
        let key = dir.path().join("token.key");
        std::fs::write(&key, b"beskar7-test-artifact-token-key-0123456789")?;
        let mut args: Vec<std::ffi::OsString> = vec!["manager".into(), "--kubeconfig".into()];
        args.push(kubeconfig.into());
        if tuning == Tuning::Tests
            && !extra
                .iter()
                .any(|a| a.starts_with("--host-refresh-seconds"))
        {
            args.push("--host-refresh-seconds=20".into());
        }
        for a in [
            format!("--metrics-bind-address=127.0.0.1:{metrics}"),
            format!("--health-probe-bind-address=127.0.0.1:{health}"),
            format!("--artifact-bind-address=127.0.0.1:{artifacts}"),
            format!("--artifact-base-url=http://127.0.0.1:{artifacts}"),
        ] {
            args.push(a.into());
        }
        args.push("--artifact-cache-dir".into());
        args.push(dir.path().join("cache").into());
        args.push("--artifact-token-key-file".into());
        args.push(key.into());
        if !extra.iter().any(|a| a.starts_with("--webhook-port")) {
            // Tests that exercise the webhooks pass their own port and certificate dir.
            args.push("--webhook-port=0".into());
        }
        if !extra.iter().any(|a| a.starts_with("--leader-elect")) {
            args.push("--leader-elect=false".into());
        }
        args.extend(extra.iter().map(Into::into));
        let log_level = match tuning {
            Tuning::Tests => "info,beskar7_controllers=debug,kube=warn",
            Tuning::Defaults => "info",
        };
        let env: Vec<(String, String)> = std::iter::once(("RUST_LOG", log_level))
            .chain(env.iter().copied())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = Self::launch(binary, &args, &env, &log)?;
        Ok(ManagerProcess {
            child,
            log,
            metrics: format!("http://127.0.0.1:{metrics}"),
            health: format!("http://127.0.0.1:{health}"),
            artifacts: format!("http://127.0.0.1:{artifacts}"),
            program: binary.to_path_buf(),
            args,
            env,
            _dir: dir,
        })
    }

    fn launch(
        program: &Path,
        args: &[std::ffi::OsString],
        env: &[(String, String)],
        log: &Path,
    ) -> std::io::Result<Child> {
        let log_file = std::fs::OpenOptions::new().append(true).open(log)?;
        Command::new(program)
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAMESPACE")
            .env("RUST_BACKTRACE", "0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
    }

    /// SIGKILLs the manager (no graceful shutdown) and starts it again with the same flags,
    /// ports and directories, as a restarted container is: the same artifact base URL and token
    /// key, so what it registers again is served under the same URLs. The log goes on in the
    /// same file.
    pub fn restart(&mut self) -> std::io::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..50 {
            let from = self.log_text().len();
            self.child = Self::launch(&self.program, &self.args, &self.env, &self.log)?;
            let stopped = self.wait_listening_since(from, std::time::Duration::from_secs(30));
            // The ports are this manager's; a socket of the killed one may linger a moment.
            if stopped.is_none()
                || !self
                    .log_text()
                    .get(from..)
                    .unwrap_or_default()
                    .contains("Address already in use")
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Err(std::io::Error::other(
            "manager ports still in use after restarts",
        ))
    }

    /// The log so far (lossy: whatever bytes a line holds, its text is searchable).
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process has exited (and how).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
