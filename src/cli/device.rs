//! `meshfs device list|revoke`.

use crate::agent::client::connect;
use crate::agent::remote::Remote;
use crate::cli::args::DeviceCommand;
use anyhow::Context;

pub async fn run(cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::List { home } => {
            let home = home.resolve()?;
            let me = home.load_device()?.device_id;
            let client = connect(&home)?;
            let devices = client.devices().await.context("listing devices")?;
            println!(
                "{:<36}  {:<20}  {:<8}  {:<21}  {:<16}  THIS",
                "ID", "NAME", "STATE", "PEERS REACH IT AT", "LAST SEEN"
            );
            let now = crate::proto::now_ms();
            for d in devices {
                let state = if d.revoked { "revoked" } else { "active" };
                let this = if d.id == me { "*" } else { "" };
                let at = d.addrs.first().map_or("-", String::as_str);
                let seen = ago(now.saturating_sub(d.last_seen_ms));
                println!(
                    "{:<36}  {:<20}  {:<8}  {at:<21}  {seen:<16}  {this}",
                    d.id, d.name, state
                );
            }
        }
        DeviceCommand::Revoke { id, home } => {
            let client = connect(&home.resolve()?)?;
            client
                .revoke(&id)
                .await
                .with_context(|| format!("revoking device {id}"))?;
            eprintln!("device {id} revoked; its tickets no longer work");
        }
    }
    Ok(())
}

/// "12 s ago", "5 min ago", "3 h ago", "2 days ago".
fn ago(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        ..60 => format!("{} s ago", s.max(0)),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_in_the_largest_whole_unit() {
        assert_eq!(super::ago(-5), "0 s ago");
        assert_eq!(super::ago(59_999), "59 s ago");
        assert_eq!(super::ago(60_000), "1 min ago");
        assert_eq!(super::ago(2 * 3_600_000 + 1), "2 h ago");
        assert_eq!(super::ago(3 * 86_400_000), "3 days ago");
    }
}
