//! Listeners that cannot be starved (issue 14): TCP connections that send nothing, to a
//! device's peer listener or to the relay, neither hold what a real device needs nor are
//! waited out. A real device's transfer completes while every one of them is still open;
//! those over the bound for one address are closed at once; the rest are dropped only when
//! their first message is overdue.

mod common;

use common::{Cloud, Device, Mount, eventually, pseudo_random};
use meshfs::agent::peer::server::LISTENER_BOUNDS;
use meshfs::relay::RELAY_BOUNDS;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// Idle connections, each from an address of its own, so that no bound per address
/// applies to them: only reading the first message before a handshake slot is taken lets
/// a real device through.
const IDLE: u8 = 64;
/// Connections from one address beyond its bound.
const OVER: usize = 4;

/// Connections that send nothing, held open by the test until dropped.
struct Idle(Vec<TcpStream>);

impl Idle {
    /// One connection to `to` from each of `sources`.
    fn open(to: SocketAddr, sources: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let conns = sources
            .into_iter()
            .map(|source| {
                rt.block_on(async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
                    let conn = socket.connect(to).await?.into_std()?;
                    conn.set_nonblocking(true)?;
                    Ok::<_, std::io::Error>(conn)
                })
                .unwrap_or_else(|e| panic!("connecting from {source} to {to}: {e}"))
            })
            .collect();
        Self(conns)
    }

    /// `n` connections from 127.0.1.1, 127.0.1.2, …
    fn from_many(to: SocketAddr, n: u8) -> Self {
        Self::open(to, (1..=n).map(|i| Ipv4Addr::new(127, 0, 1, i)))
    }

    /// `n` connections, all from 127.0.2.1.
    fn from_one(to: SocketAddr, n: usize) -> Self {
        Self::open(to, std::iter::repeat_n(Ipv4Addr::new(127, 0, 2, 1), n))
    }

    /// How many the server has closed (the sockets are non-blocking: a read that would
    /// block finds the connection open).
    fn closed(&self) -> usize {
        let is_open = |mut conn: &TcpStream| {
            let read = conn.read(&mut [0u8; 1]);
            matches!(read, Err(e) if e.kind() == ErrorKind::WouldBlock)
        };
        self.0.iter().filter(|c| !is_open(c)).count()
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// Devices A and B of one user; A holds an 8 MiB file of a device-only folder, whose entry
/// B sees but whose blocks only A has. Fields drop in order: mounts before homes.
struct HeldByA {
    _ma: Mount,
    mb: Mount,
    a: Device,
    b: Device,
    data: Vec<u8>,
}

impl HeldByA {
    fn new(cloud: &Cloud, a_flags: &[&str]) -> Self {
        cloud.add_user("ann");
        let a = Device::login(cloud, "ann", "laptop");
        let b = Device::login(cloud, "ann", "desktop");
        a.cli_ok(&["folder", "create", "Private", "--device-only"]);
        let ma = a.mount_with(a_flags);
        let mb = b.mount();
        assert!(eventually(Duration::from_secs(20), || ma
            .join("Private")
            .is_dir()
            && mb.join("Private").is_dir()));
        let data = pseudo_random(8 * MIB, 14);
        std::fs::write(ma.join("Private/f.bin"), &data).expect("write on A");
        assert!(a.uploaded());
        let held = Self {
            _ma: ma,
            mb,
            a,
            b,
            data,
        };
        let len = held.data.len() as u64;
        assert!(
            eventually(Duration::from_secs(30), || std::fs::metadata(held.on_b())
                .is_ok_and(|m| m.len() == len)),
            "the entry reached B"
        );
        held
    }

    fn on_b(&self) -> PathBuf {
        self.mb.join("Private/f.bin")
    }

    /// B reads the file, which only A can give, and prints how long it took.
    fn b_reads(&self, through: &str) {
        let started = Instant::now();
        let got = std::fs::read(self.on_b()).expect("B's read completes");
        let took = started.elapsed();
        println!("B read 8 MiB from A {through} in {took:?}");
        assert!(got == self.data, "B reads A's bytes");
        assert!(
            eventually(Duration::from_secs(5), || self
                .b
                .counters()
                .blocks_from_peers
                >= 8),
            "the blocks came from A: {:?}",
            self.b.counters()
        );
    }
}

/// Opens the idle connections to `to`, lets B read, and checks what the server did with
/// them: it closed at once those over `per_source` from one address, kept every other one
/// open until the read completed, and drops them when their first message is overdue.
fn read_past_idle_connections(held: &HeldByA, to: SocketAddr, per_source: usize, through: &str) {
    let idle = Idle::from_many(to, IDLE);
    let crowd = Idle::from_one(to, per_source + OVER);
    assert!(
        eventually(Duration::from_secs(10), || crowd.closed() == OVER),
        "the {OVER} connections over the bound for one address are closed at once ({} were)",
        crowd.closed()
    );
    held.b_reads(through);
    assert_eq!(
        idle.closed(),
        0,
        "the read did not wait for idle connections to be dropped"
    );
    assert_eq!(
        crowd.closed(),
        OVER,
        "those within the bound stayed open too"
    );
    assert!(
        eventually(Duration::from_secs(30), || idle.closed() == idle.0.len()
            && crowd.closed() == crowd.0.len()),
        "connections that never send a first message are dropped in the end"
    );
}

#[test]
fn a_transfer_from_a_peer_listener_holding_64_idle_connections_completes() {
    let cloud = Cloud::start_with(&["--no-relay"]);
    let listen = free_addr();
    let held = HeldByA::new(&cloud, &["--peer-listen", &listen.to_string()]);
    read_past_idle_connections(
        &held,
        listen,
        LISTENER_BOUNDS.per_source,
        "directly, past 64 idle connections to A's listener,",
    );
}

#[test]
fn a_transfer_through_a_relay_holding_64_idle_connections_completes() {
    let relay = free_addr();
    let cloud = Cloud::start_logging(
        "meshfs::relay=debug,info",
        &["--relay-listen", &relay.to_string()],
    );
    // A tells peers an address where nothing listens: B reaches it only through the relay.
    let dead = free_addr().to_string();
    let held = HeldByA::new(&cloud, &["--peer-advertise", &dead]);
    let a_id = held.a.device_id();
    assert!(
        eventually(Duration::from_secs(30), || cloud.log_text().lines().any(
            |l| l.contains("device listening at the relay") && l.contains(&a_id)
        )),
        "A is reachable through the relay"
    );
    read_past_idle_connections(
        &held,
        relay,
        RELAY_BOUNDS.per_source,
        "through the relay, past 64 idle connections to it,",
    );
    assert!(
        cloud.log_text().contains("relay paired two devices"),
        "the blocks went through the relay"
    );
}
