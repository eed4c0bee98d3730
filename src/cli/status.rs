//! `meshfs status`: what this device is, whether its agent runs (checked, not assumed),
//! what waits to upload, what moved, and whether the cloud answers.

use crate::agent::client::connect;
use crate::agent::config::Size;
use crate::agent::remote::Remote;
use crate::agent::status::AgentStatus;
use crate::cli::args::StatusArgs;
use serde::Serialize;

#[derive(Serialize)]
struct Report {
    user: String,
    device_id: String,
    cloud: String,
    cloud_reachable: bool,
    cloud_error: Option<String>,
    quota_used: Option<u64>,
    quota: Option<u64>,
    agent: Option<AgentStatus>,
}

pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    let home = a.home.resolve()?;
    let dev = home.load_device()?;
    let client = connect(&home)?;
    let usage = client.usage().await;
    let report = Report {
        user: dev.user,
        device_id: dev.device_id,
        cloud: client.cloud_url().to_owned(),
        cloud_reachable: usage.is_ok(),
        cloud_error: usage.as_ref().err().map(|e| format!("{e:#}")),
        quota_used: usage.as_ref().ok().map(|u| u.bytes_stored),
        quota: usage.as_ref().ok().map(|u| u.quota),
        agent: AgentStatus::read_live(&home.status_file()),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("user:     {}", report.user);
    println!("device:   {}", report.device_id);
    match (&report.cloud_error, report.quota_used, report.quota) {
        (None, Some(used), Some(q)) => println!(
            "cloud:    {} (reachable; {} of {} MB used)",
            report.cloud,
            used / 1_000_000,
            q / 1_000_000
        ),
        (Some(e), _, _) => println!("cloud:    {} (NOT reachable: {e})", report.cloud),
        _ => println!("cloud:    {}", report.cloud),
    }
    match &report.agent {
        None => println!("agent:    not running (start it with `meshfs mount DIR`)"),
        Some(s) => {
            println!("agent:    running (pid {}) at {}", s.pid, s.mountpoint);
            println!(
                "pending:  {} local change(s) not yet in the cloud; {} refused",
                s.pending_uploads, s.failed_uploads
            );
            let c = &s.counters;
            println!(
                "moved:    fetched {} blocks ({} bytes), uploaded {} blocks ({} bytes) in {} changes, {} rejected, {} conflicts",
                c.blocks_fetched,
                c.bytes_fetched,
                c.blocks_uploaded,
                c.bytes_uploaded,
                c.changes_sent,
                c.blocks_rejected,
                c.conflicts
            );
            println!(
                "peers:    {} blocks ({} bytes) came from peers; served {} blocks ({} bytes)",
                c.blocks_from_peers, c.bytes_from_peers, c.blocks_served, c.bytes_served
            );
            let k = &s.cache;
            println!(
                "cache:    {} of {} used on this device; {} must stay; {} blocks evicted so far",
                Size(k.used),
                Size(k.limit),
                Size(k.kept),
                c.blocks_evicted
            );
            if k.views > 0 || c.passthrough_opens > 0 {
                println!(
                    "views:    {} of it in copies of whole files read by FUSE passthrough; {} passthrough opens so far",
                    Size(k.views),
                    c.passthrough_opens
                );
            }
            if k.limit > 0 && k.kept > k.limit {
                println!(
                    "warning:  what must stay on this device (changes not yet uploaded, pinned files, content held nowhere else) exceeds the cache limit; reconnect to the cloud, unpin files or raise --cache-size"
                );
            }
            if c.blocks_unavailable > 0 {
                println!(
                    "missing:  {} block(s) no device or cloud could give when wanted (reads failed; see the agent's log)",
                    c.blocks_unavailable
                );
            }
        }
    }
    Ok(())
}
