//! Relays that hold no secret of the cloud's (DESIGN §7a): relay tickets, which the cloud
//! refuses; a relay started with only the cloud's JWKS URL, the cloud's CA certificate and
//! a certificate of its own, which refuses the cloud's tickets and, within its standing
//! time, a revoked device; and the list of relays devices learn from the cloud.

use super::*;
use meshfs::proto::relay::{self as wire, Hello, Reply};
use meshfs::proto::{CloudInfo, RelayInfo, Standing, StandingRequest};
use meshfs::relay::{STANDING_FOR, Standalone, StandaloneConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A relay on its own beside `env`'s cloud, and the CA devices check it with.
struct OwnRelay {
    relay: Standalone,
    ca: Vec<u8>,
    _dir: tempfile::TempDir,
}

async fn own_relay(env: &Env) -> OwnRelay {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StandaloneConfig {
        dir: dir.path().join("relay"),
        listen: "127.0.0.1:0".parse().unwrap(),
        names: vec!["localhost".into(), "127.0.0.1".into()],
        jwks: format!("{}/.well-known/jwks.json", env.base)
            .parse()
            .unwrap(),
        cloud_ca: env.data().join("ca.pem"),
        transcript: None,
    };
    let relay = meshfs::relay::start_standalone(cfg).await.unwrap();
    let mut held: Vec<String> = std::fs::read_dir(dir.path().join("relay"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    held.sort();
    assert_eq!(
        held,
        ["ca-key.pem", "ca.pem"],
        "the relay keeps its own CA and nothing else"
    );
    let ca = std::fs::read(dir.path().join("relay/ca.pem")).unwrap();
    OwnRelay {
        relay,
        ca,
        _dir: dir,
    }
}

impl OwnRelay {
    /// A TLS connection to the relay with `hello` sent, checked with the relay's own CA.
    async fn open(&self, hello: &Hello) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.relay.relay.addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(&wire::encode(hello).unwrap()).await.unwrap();
        tls.flush().await.unwrap();
        tls
    }

    /// A data leg presenting `token`.
    async fn data_leg(&self, token: &wire::Token) -> TcpStream {
        let mut tcp = TcpStream::connect(self.relay.relay.addr).await.unwrap();
        tcp.write_all(&wire::data_preamble(token)).await.unwrap();
        tcp
    }

    /// The relay's first answer to `hello`.
    async fn answer(&self, hello: &Hello) -> Reply {
        read_reply(&mut self.open(hello).await).await
    }
}

async fn read_reply(tls: &mut TlsStream<TcpStream>) -> Reply {
    let mut header = [0u8; wire::HEADER_LEN];
    tls.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; wire::body_len(header).unwrap()];
    tls.read_exact(&mut body).await.unwrap();
    wire::decode(&body).unwrap()
}

impl Env {
    async fn relay_ticket(&self, dev: &Dev) -> String {
        let res = self
            .req(Method::POST, "/tickets/relay", Some(&dev.identity))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json::<TicketResponse>().await.unwrap().ticket
    }

    async fn standing(&self, relay_ticket: &str) -> reqwest::Response {
        let body = StandingRequest {
            relay_ticket: relay_ticket.into(),
        };
        self.req(Method::POST, "/relay/standing", None)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn cloud_info(&self) -> CloudInfo {
        let res = self.req(Method::GET, "/.well-known/meshfs", None).send();
        res.await.unwrap().json().await.unwrap()
    }
}

/// The token of the `Paired` the relay answers on `tls`.
async fn paired(tls: &mut TlsStream<TcpStream>) -> wire::Token {
    match read_reply(tls).await {
        Reply::Paired { token } => wire::parse_token(&token).unwrap(),
        other => panic!("expected to be paired, got {other:?}"),
    }
}

fn refused(reply: &Reply) -> &str {
    match reply {
        Reply::Refused { message } => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_relay_ticket_names_the_device_for_relays_and_is_401_at_the_cloud() {
    let env = env().await;
    let ann = env.login("ann").await;
    let relay_ticket = env.relay_ticket(&ann).await;
    let jwks: Jwks = env
        .req(Method::GET, "/.well-known/jwks.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims: Claims = KeySet::from_jwks(&jwks)
        .unwrap()
        .verify(&relay_ticket)
        .unwrap();
    assert_eq!(claims.kind, TicketKind::Relay);
    assert_eq!(claims.aud, "meshfs-relay");
    assert_eq!(claims.dev, ann.id);

    for (method, path) in [
        (Method::GET, "/users/ann/devices".to_string()),
        (Method::GET, "/users/ann/folders".to_string()),
        (Method::POST, "/tickets/relay".to_string()),
    ] {
        let res = env.req(method, &path, Some(&relay_ticket)).send().await;
        assert_eq!(
            api_error(res.unwrap()).await,
            (StatusCode::UNAUTHORIZED, ErrorCode::WrongAudience),
            "{path}"
        );
    }
    let res = env
        .req(Method::POST, "/tickets/access", Some(&relay_ticket))
        .json(&AccessRequest {
            resource: "/users/ann".into(),
            rights: vec![Right::Read],
        })
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "no access ticket for it"
    );

    let standing: Standing = env.standing(&relay_ticket).await.json().await.unwrap();
    assert!(standing.active && standing.device == ann.id);
    let res = env.standing(&ann.identity).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "the standing of a device is told only for a relay ticket"
    );
}

#[tokio::test]
async fn a_relay_on_its_own_pairs_devices_with_relay_tickets_and_refuses_cloud_tickets() {
    let env = env().await;
    let relay = own_relay(&env).await;
    let ann = env.login("ann").await;
    let laptop = env.login("ann").await;
    let peer_ticket = {
        let res = env
            .req(Method::POST, "/tickets/peer", Some(&ann.identity))
            .json(&PeerRequest {
                device: laptop.id.clone(),
                folder: None,
            })
            .send()
            .await
            .unwrap();
        res.json::<TicketResponse>().await.unwrap().ticket
    };

    let why = relay
        .answer(&Hello::Listen {
            relay_ticket: laptop.identity.clone(),
        })
        .await;
    assert!(
        refused(&why).contains("relay ticket refused"),
        "an identity ticket is refused: {why:?}"
    );
    let why = relay
        .answer(&Hello::Dial {
            relay_ticket: peer_ticket.clone(),
            peer_ticket: peer_ticket.clone(),
        })
        .await;
    assert!(refused(&why).contains("relay ticket refused"), "{why:?}");

    // The laptop listens with its relay ticket; ann dials it and they are paired.
    let mut listening = relay
        .open(&Hello::Listen {
            relay_ticket: env.relay_ticket(&laptop).await,
        })
        .await;
    assert_eq!(read_reply(&mut listening).await, Reply::Ready);
    let ann_ticket = env.relay_ticket(&ann).await;
    let hello = Hello::Dial {
        relay_ticket: ann_ticket,
        peer_ticket,
    };
    let (mut dialer, incoming) = tokio::join!(relay.open(&hello), read_reply(&mut listening));
    let Reply::Incoming { rendezvous, from } = incoming else {
        panic!("expected a rendezvous, got {incoming:?}");
    };
    assert_eq!(from, ann.id);
    let mut accepted = relay
        .open(&Hello::Accept {
            relay_ticket: env.relay_ticket(&laptop).await,
            rendezvous,
        })
        .await;
    let (accepted, dialer) = (paired(&mut accepted).await, paired(&mut dialer).await);
    assert_ne!(accepted, dialer, "each side has a token of its own");

    // Each side opens its data leg with its token; bytes then flow between the legs.
    let mut dialer_leg = relay.data_leg(&dialer).await;
    let mut accepted_leg = relay.data_leg(&accepted).await;
    dialer_leg.write_all(b"through the relay").await.unwrap();
    let mut got = [0u8; 17];
    accepted_leg.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"through the relay");
    accepted_leg.write_all(b"and back").await.unwrap();
    let mut back = [0u8; 8];
    dialer_leg.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"and back");
    // While they talk, the relay holds the listening connection and the two legs: the
    // control connections of the pairing are closed and count no more.
    let held = || relay.relay.relay.open_connections();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held() != 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(held(), 3);

    // A token is spent on first use: a second leg with it is closed unpaired, as is one
    // with a token the relay never gave.
    for token in [dialer, [7u8; wire::TOKEN_LEN]] {
        let mut leg = relay.data_leg(&token).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), leg.read(&mut [0u8; 1]))
            .await
            .expect("the relay closes the leg");
        assert!(
            matches!(closed, Ok(0) | Err(_)),
            "a spent or unknown token pairs nothing: {closed:?}"
        );
    }
}

#[tokio::test]
async fn a_revoked_device_is_refused_by_a_relay_on_its_own_within_its_standing_time() {
    let env = env().await;
    let relay = own_relay(&env).await;
    let ann = env.login("ann").await;
    let laptop = env.login("ann").await;
    let ticket = env.relay_ticket(&laptop).await;
    let mut listening = relay
        .open(&Hello::Listen {
            relay_ticket: ticket.clone(),
        })
        .await;
    assert_eq!(read_reply(&mut listening).await, Reply::Ready);

    let res = env
        .req(
            Method::DELETE,
            &format!("/users/ann/devices/{}", laptop.id),
            Some(&ann.identity),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let revoked = Instant::now();
    let standing: Standing = env.standing(&ticket).await.json().await.unwrap();
    assert!(
        !standing.active,
        "the cloud tells of the revocation at once"
    );

    // The listening connection is dropped at its next check, with the reason.
    let dropped = tokio::time::timeout(STANDING_FOR * 2, read_reply(&mut listening))
        .await
        .expect("the relay drops a revoked device that listens");
    assert!(
        refused(&dropped).contains("may no longer use relays"),
        "{dropped:?}"
    );
    // A new connection with the same, still unexpired, ticket is refused as well.
    let why = relay
        .answer(&Hello::Listen {
            relay_ticket: ticket,
        })
        .await;
    assert!(
        refused(&why).contains("may no longer use relays"),
        "{why:?}"
    );
    println!(
        "the relay refused the revoked device {:?} after its revocation",
        revoked.elapsed()
    );
}

#[tokio::test]
async fn devices_learn_the_cloud_processes_relay_first_then_those_added() {
    let env = env().await;
    let own = RelayInfo {
        addr: format!("127.0.0.1:{}", env.cloud.relay_addr.unwrap().port()),
        ca: std::fs::read_to_string(env.data().join("ca.pem")).unwrap(),
    };
    assert_eq!(env.cloud_info().await.relays, std::slice::from_ref(&own));
    let other = own_relay(&env).await;
    let added = RelayInfo {
        addr: other.relay.relay.addr.to_string(),
        ca: String::from_utf8(other.ca.clone()).unwrap(),
    };
    cloud::add_relay(&env.engines, &added.addr, &added.ca)
        .await
        .unwrap();
    assert_eq!(env.cloud_info().await.relays, [own.clone(), added.clone()]);
    cloud::remove_relay(&env.engines, &added.addr)
        .await
        .unwrap();
    assert_eq!(env.cloud_info().await.relays, [own]);
    assert!(
        cloud::remove_relay(&env.engines, &added.addr)
            .await
            .is_err(),
        "removing a relay that is not there says so"
    );
}
