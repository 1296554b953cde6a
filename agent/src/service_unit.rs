//! `agent install-service`: the systemd unit that keeps a daemon agent up across logouts,
//! crashes and reboots. The unit names only the state folder: the token and the PEMs are read
//! from its files, never from the unit's command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Name of the unit.
pub const UNIT_NAME: &str = "multitenant-agent.service";

/// Where systemd reads administrators' units.
const UNIT_DIR: &str = "/etc/systemd/system";

/// Open files the agent may hold: one per stream of every tenant's load.
const FILE_LIMIT: u32 = 1_048_576;

/// What the unit runs.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The agent binary.
    pub binary: PathBuf,
    /// Its state folder (`agent init`).
    pub state_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The MPS control program.
    pub mps_control: PathBuf,
    /// Retention bounds given to `install-service`, passed on to `serve` (the daemon's
    /// defaults apply to those not given).
    pub retention: crate::cli::RetentionArgs,
}

impl ServiceSettings {
    /// `agent serve` as the unit runs it, and as one would run it by hand in the foreground.
    pub fn command_line(&self) -> String {
        let mut words = vec![
            quote(&self.binary),
            "serve".into(),
            "--state-dir".into(),
            quote(&self.state_dir),
            "--listen".into(),
            self.listen.to_string(),
            "--mps-control".into(),
            quote(&self.mps_control),
        ];
        use crate::retention::{exact_size, Limit};
        if let Some(keep_for) = self.retention.keep_runs_for {
            words.push("--keep-runs-for".into());
            words.push(match keep_for {
                Limit::Unbounded => "forever".into(),
                Limit::At(d) => humantime::format_duration(d).to_string().replace(' ', ""),
            });
        }
        if let Some(keep_size) = self.retention.keep_runs_size {
            words.push("--keep-runs-size".into());
            words.push(match keep_size {
                Limit::Unbounded => "unlimited".into(),
                Limit::At(bytes) => exact_size(bytes),
            });
        }
        words.join(" ")
    }

    /// The unit file's text.
    pub fn unit(&self) -> String {
        format!(
            "[Unit]
Description=multitenant agent: runs GPU-sharing experiments for paired coordinators
# See the README's section \"On a GPU you rented yourself\".
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={command}
# The token and TLS files are read from the state folder, never from this line.
Restart=on-failure
RestartSec=5s
# SIGTERM first: the agent stops its runs, ends its engines' process groups and keeps
# their files; the rest is killed only if that takes longer than TimeoutStopSec.
KillMode=mixed
TimeoutStopSec=60s
LimitNOFILE={FILE_LIMIT}
StandardOutput=journal
StandardError=journal
SyslogIdentifier=multitenant-agent

[Install]
WantedBy=multi-user.target
",
            command = self.command_line()
        )
    }
}

/// Quotes a path for a unit's `ExecStart=` (and a shell) when it holds spaces or quotes.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        text
    } else {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Whether this machine runs systemd (the test `sd_booted(3)` makes).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Writes the unit, reloads systemd, and enables and starts the agent. Returns the unit's path.
pub fn install(settings: &ServiceSettings) -> anyhow::Result<PathBuf> {
    if !systemd_running() {
        bail!(
            "this machine does not run systemd, so there is no service to install; run the agent in the foreground (under tmux, or your init system) with:\n  {}",
            settings.command_line()
        );
    }
    let path = Path::new(UNIT_DIR).join(UNIT_NAME);
    std::fs::write(&path, settings.unit()).with_context(|| {
        format!(
            "writing {} (installing a service needs root: try sudo)",
            path.display()
        )
    })?;
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "--now", UNIT_NAME])?;
    Ok(path)
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("running systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_spaces_are_quoted_and_plain_ones_are_not() {
        assert_eq!(
            quote(Path::new("/usr/local/bin/agent")),
            "/usr/local/bin/agent"
        );
        assert_eq!(quote(Path::new("/opt/my agent")), "\"/opt/my agent\"");
    }
}
