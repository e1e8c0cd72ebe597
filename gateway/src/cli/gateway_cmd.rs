//! `wanmig gateway`: runs one site's gateway until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wanmig_gateway::{Gateway, GatewayConfig};

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The site's TOML config (see configs/site-a.toml).
    #[arg(long, short = 'c', env = "WANMIG_CONFIG")]
    pub config: PathBuf,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let config = GatewayConfig::load(&args.config)?;
    let site = config.site.clone();
    let gw = Gateway::start(config).await.with_context(|| {
        format!(
            "starting the gateway of {site} from {}",
            args.config.display()
        )
    })?;
    tracing::info!(
        site,
        quic = ?gw.local_addr(),
        control = ?gw.control_addr(),
        metrics = ?gw.metrics_addr(),
        "gateway running; Ctrl-C stops it"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    tracing::info!(site, "shutting down");
    gw.shutdown().await;
    Ok(())
}
