//! Driving the peer protocol by hand with a device's own key and tickets, as a peer that
//! is not a meshfs agent would.

use super::Device;
use meshfs::agent::remote::Remote;
use std::time::Duration;

/// What a device needs to open a channel by hand: its cloud client, key and ticket check.
pub struct Hand {
    pub client: meshfs::agent::client::CloudClient,
    pub id: String,
    pub key: std::sync::Arc<rsa::PrivateKey>,
}

impl Hand {
    pub fn of(dev: &Device) -> Self {
        let home = meshfs::agent::home::Home::new(&dev.home);
        let client = meshfs::agent::client::connect(&home).expect("client");
        let key = meshfs::crypto::keys::load_private(&home.key()).expect("key");
        Hand {
            id: client.device_id().to_string(),
            client,
            key: std::sync::Arc::new(key),
        }
    }

    /// Checks peers' tickets as this device's agent would, with the cloud's current keys.
    pub async fn ticket_check(
        &self,
    ) -> std::sync::Arc<dyn meshfs::crypto::channel::PeerCheck + Send + Sync> {
        let (_, jwks) = self.client.cloud_info().await.expect("jwks");
        let keys = meshfs::crypto::ticket::KeySet::from_jwks(&jwks).expect("keys");
        let check =
            meshfs::crypto::channel::TicketCheck::new(keys, &self.id, &self.key.to_public_key())
                .expect("check");
        std::sync::Arc::new(check)
    }

    /// Opens a channel to `to` at `addr` showing `ticket`.
    pub async fn connect(
        &self,
        addr: &str,
        to: &str,
        ticket: String,
    ) -> Result<(), meshfs::crypto::channel::ChannelError> {
        self.channel(addr, to, ticket).await.map(drop)
    }

    /// The channel to `to` at `addr`, opened showing `ticket`.
    pub async fn channel(
        &self,
        addr: &str,
        to: &str,
        ticket: String,
    ) -> Result<
        meshfs::agent::peer::channel::Channel<tokio::net::TcpStream>,
        meshfs::crypto::channel::ChannelError,
    > {
        let check = self.ticket_check().await;
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let me = meshfs::crypto::channel::LocalPeer {
            device: self.id.clone(),
            key: std::sync::Arc::clone(&self.key),
            ticket,
            key_log: None,
        };
        meshfs::agent::peer::channel::connect(tcp, me, to, check).await
    }
}

/// Where `device` listens for peers, as `hand` sees it: among its user's devices, or with
/// `folder`, among the devices that mapped it (another user's too). Asked every 100 ms, 10 s
/// at most: a polling loop, as in `eventually`, but async.
pub async fn listener_of(hand: &Hand, folder: Option<&str>, device: &str) -> String {
    for _ in 0..100 {
        let devices = match folder {
            Some(f) => hand.client.folder_devices(f).await,
            None => hand.client.devices().await,
        };
        if let Some(addr) = devices
            .expect("devices")
            .iter()
            .find(|d| d.id == device)
            .and_then(|d| d.addrs.first())
        {
            return addr.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("device {device} reported no address");
}
