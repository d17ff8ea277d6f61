//! The real `doorstep` binary as a child process, for tests that kill it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `doorstep serve` process on a data directory.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub addr: std::net::SocketAddr,
}

impl ServerProcess {
    /// Starts `doorstep serve` on `127.0.0.1:0` and reads the bound address
    /// from the line it prints. `binary` is `env!("CARGO_BIN_EXE_doorstep")`
    /// as an integration test sees it.
    pub async fn start(binary: &Path, data_dir: &Path) -> anyhow::Result<ServerProcess> {
        Self::start_logging(binary, data_dir, "warn", None).await
    }

    /// [`ServerProcess::start`] with its log filtered by `rust_log` and,
    /// given a path, written to that file instead of the test's output.
    pub async fn start_logging(
        binary: &Path,
        data_dir: &Path,
        rust_log: &str,
        log: Option<&Path>,
    ) -> anyhow::Result<ServerProcess> {
        Self::start_configured(binary, data_dir, rust_log, log, &[]).await
    }

    /// [`ServerProcess::start`] with settings given as the environment
    /// variables an operator would set (`DOORSTEP_MESSAGES_PER_SECOND`, ...).
    pub async fn start_with_env(
        binary: &Path,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ServerProcess> {
        Self::start_configured(binary, data_dir, "warn", None, env).await
    }

    async fn start_configured(
        binary: &Path,
        data_dir: &Path,
        rust_log: &str,
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ServerProcess> {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(binary)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", rust_log)
            // As in production: a caught panic must not pay for symbolizing
            // a backtrace of this debug build (it costs ~100 MiB of RSS).
            .env("RUST_BACKTRACE", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("Doorstep is listening on http://") {
                    let addr = rest.split_whitespace().next().context("address")?;
                    return Ok::<_, anyhow::Error>(addr.parse()?);
                }
            }
            bail!("doorstep exited before listening")
        })
        .await
        .context("doorstep did not start")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProcess { child, addr })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/sync", self.addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process's peak resident memory so far (Linux `VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        Ok(self.status_field("VmHWM:")? * 1024)
    }

    /// The process's threads now.
    pub fn threads(&self) -> anyhow::Result<u64> {
        self.status_field("Threads:")
    }

    /// The process's open file descriptors now (sockets included).
    pub fn open_files(&self) -> anyhow::Result<usize> {
        let pid = self.child.id().context("the process has exited")?;
        Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn status_field(&self, name: &str) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the process has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("status value")?
            .parse()?)
    }

    /// SIGTERM, as a supervisor stops a server, and its exit status once it
    /// has drained (at most 60 s).
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("the process has exited")?;
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        Ok(tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await??)
    }

    /// SIGKILL: no shutdown code runs, like a power cut for the process.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
