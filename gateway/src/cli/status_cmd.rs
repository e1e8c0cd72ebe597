//! `wanmig status`: the local gateway's peers as a table (or JSON).

use clap::Args;
use wanmig_gateway::control::StatusReport;
use wanmig_gateway::LinkState;
use wanmig_units::format_size;

use super::site_tables::render_site;
use super::table::table;
use super::target::ControlTarget;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: ControlTarget,
    /// Print the raw JSON status instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let report = client.status().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
        // VMs and migrations at this site (gateways without them answer
        // with an error, which leaves just the peer table).
        if let Ok(site) = render_site(&client).await {
            print!("{site}");
        }
    }
    Ok(())
}

fn render(r: &StatusReport) -> String {
    let mut out = format!(
        "site {} (QUIC on {})\n",
        r.site,
        r.listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into())
    );
    let header = [
        "PEER", "STATE", "ROLE", "ADDRESS", "RTT", "CWND", "SENT", "RECEIVED", "LOST", "RECONN",
        "FOR",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for p in &r.peers {
        let l = p.link.unwrap_or_default();
        let up = p.state == LinkState::Up;
        let dash = || "-".to_string();
        rows.push(vec![
            p.site.clone(),
            format!("{:?}", p.state).to_lowercase(),
            format!("{:?}", p.role).to_lowercase(),
            p.address.to_string(),
            if up {
                format!("{:.1}ms", l.rtt_ms)
            } else {
                dash()
            },
            if up {
                format_size(l.cwnd_bytes)
            } else {
                dash()
            },
            if up {
                format_size(l.bytes_sent)
            } else {
                dash()
            },
            if up {
                format_size(l.bytes_received)
            } else {
                dash()
            },
            if up {
                l.lost_packets.to_string()
            } else {
                dash()
            },
            p.reconnects.to_string(),
            humantime::format_duration(std::time::Duration::from_secs(p.state_secs as u64))
                .to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    for p in &r.peers {
        if let (false, Some(e)) = (p.state == LinkState::Up, &p.last_error) {
            out.push_str(&format!("{}: {e}\n", p.site));
        }
    }
    if r.refusals.total > 0 {
        out.push_str(&format!(
            "refused handshakes: {} (last: {})\n",
            r.refusals.total,
            r.refusals.last.as_deref().unwrap_or("?")
        ));
    }
    out
}
