//! Which gateway a CLI command talks to: `--control ADDR --token-file F`,
//! or the control section of `--config FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use wanmig_gateway::control_client::ControlClient;
use wanmig_gateway::GatewayConfig;

#[derive(Debug, Args)]
pub struct ControlTarget {
    /// The gateway's config file; its [control] section gives the address
    /// and token file.
    #[arg(long, short = 'c', env = "WANMIG_CONFIG", conflicts_with = "control")]
    pub config: Option<PathBuf>,
    /// Control API address of the local gateway (e.g. 127.0.0.1:7100).
    #[arg(long, requires = "token_file")]
    pub control: Option<SocketAddr>,
    /// File holding the control API bearer token (control.token_file).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ControlTarget {
    pub fn client(&self) -> anyhow::Result<ControlClient> {
        if let (Some(addr), Some(tf)) = (self.control, &self.token_file) {
            return Ok(ControlClient::with_token_file(addr, tf)?);
        }
        let Some(path) = &self.config else {
            bail!("say which gateway to ask: --config FILE, or --control ADDR --token-file FILE");
        };
        let cfg = GatewayConfig::load(path)?;
        let Some(c) = cfg.control else {
            bail!(
                "{}: has no [control] section, so its gateway runs no control API",
                path.display()
            );
        };
        let tf = self.token_file.clone().unwrap_or(c.token_file);
        ControlClient::with_token_file(c.listen, &tf)
            .with_context(|| format!("using the control settings of {}", path.display()))
    }
}
