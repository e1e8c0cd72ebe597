//! The VM and migration tables of one site, as `wanmig vm list` and
//! `wanmig status` print them.

use wanmig_gateway::control_client::ControlClient;
use wanmig_gateway::migration::api::VmList;
use wanmig_gateway::migration::MigrationRecord;
use wanmig_gateway::vms::VmState;
use wanmig_units::format_size;

use super::table::table;

/// The VMs of one site as a table.
pub fn render_vms(list: &VmList) -> String {
    if list.vms.is_empty() {
        return format!("no VMs at {}\n", list.site);
    }
    let mut rows = vec![["VM", "STATE", "MEMORY", "ITERATION", "DISK", "NOTE"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for v in &list.vms {
        let (state, note) = match &v.state {
            VmState::Running => ("running".to_string(), v.last_error.clone()),
            VmState::MigratingOut { to } => (format!("migrating to {to}"), None),
            VmState::Incoming { from } => (format!("arriving from {from}"), None),
            VmState::MigratedAway { to } => (format!("migrated to {to}"), None),
            VmState::HandoverUnconfirmed { to, reason } => {
                (format!("handed over to {to}?"), Some(reason.clone()))
            }
            VmState::Failed { reason } => ("failed".to_string(), Some(reason.clone())),
        };
        rows.push(vec![
            v.name.clone(),
            state,
            format_size(v.mem_size),
            v.iteration.to_string(),
            v.storage
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default(),
            note.unwrap_or_default(),
        ]);
    }
    table(&rows)
}

/// Migrations (in flight and finished) as a table.
pub fn render_migrations(list: &[MigrationRecord]) -> String {
    if list.is_empty() {
        return "no migrations\n".into();
    }
    let mut rows = vec![[
        "ID", "VM", "FROM", "TO", "PHASE", "OUTCOME", "WIRE", "RATIO", "DOWNTIME", "NOTE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for r in list {
        let note = r
            .resolution
            .clone()
            .or_else(|| r.error.clone())
            .unwrap_or_default();
        rows.push(vec![
            r.id.clone(),
            r.vm.clone(),
            r.from.clone(),
            r.to.clone(),
            serde_json::to_value(r.phase)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            match r.outcome {
                Some(o) => o.label().to_string(),
                None if r.parked => "parked".into(),
                None => "in flight".into(),
            },
            if r.progress.bytes_out > 0 {
                format_size(r.progress.bytes_out)
            } else {
                "-".into()
            },
            if r.progress.bytes_out > 0 {
                format!("{:.1}x", r.progress.reduction_ratio())
            } else {
                "-".into()
            },
            r.downtime_ms
                .map(|d| format!("{d:.0}ms"))
                .unwrap_or_else(|| "-".into()),
            note,
        ]);
    }
    table(&rows)
}

/// The VM and migration sections of `wanmig status`.
pub async fn render_site(client: &ControlClient) -> anyhow::Result<String> {
    let vms = client.vms().await?;
    let migrations = client.migrations().await?;
    Ok(format!(
        "\nVMs at {}:\n{}\nmigrations:\n{}",
        vms.site,
        render_vms(&vms),
        render_migrations(&migrations.migrations)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wanmig_gateway::vms::{DiskState, VmInfo};

    #[test]
    fn vm_table_says_where_and_why() {
        let list = VmList {
            site: "site-a".into(),
            vms: vec![
                VmInfo {
                    name: "web".into(),
                    state: VmState::Running,
                    mem_size: 64 << 20,
                    iteration: 42,
                    last_error: Some("migration to site-b failed: link down".into()),
                    storage: Some(DiskState::Copying {
                        from: "site-b".into(),
                        path: "disks/web.disk".into(),
                        local_blocks: 0,
                        total_blocks: 0,
                        wire_bytes: 0,
                    }),
                },
                VmInfo {
                    name: "db".into(),
                    state: VmState::MigratedAway {
                        to: "site-b".into(),
                    },
                    mem_size: 32 << 20,
                    iteration: 7,
                    last_error: None,
                    storage: None,
                },
            ],
        };
        let t = render_vms(&list);
        assert!(t.contains("running") && t.contains("link down"), "{t}");
        assert!(t.contains("migrated to site-b"), "{t}");
        assert!(t.contains("copying from site-b"), "{t}");
        assert!(render_vms(&VmList {
            site: "x".into(),
            vms: vec![]
        })
        .contains("no VMs"));
    }
}
