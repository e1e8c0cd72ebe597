//! Peering refuses whoever cannot prove to be the configured site: a
//! certificate from another CA, or one that names another site. Every
//! refusal is visible (peer not up, counted, reason recorded). A peer that
//! is who it says gets a bounded number of streams.

use std::sync::Arc;
use std::time::Duration;

use wanmig_e2e::{init_logging, MeshBuilder};
use wanmig_gateway::certs::{self, PemPair};
use wanmig_gateway::config::GatewayConfig;
use wanmig_gateway::peering::close_code;
use wanmig_gateway::tls::{self, Identity};
use wanmig_gateway::{Gateway, GatewayError, LinkState};

fn write_pair(
    dir: &std::path::Path,
    name: &str,
    pair: &PemPair,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let c = dir.join(format!("{name}.pem"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, &pair.cert_pem).unwrap();
    std::fs::write(&k, &pair.key_pem).unwrap();
    (c, k)
}

/// A raw QUIC client on `socket` presenting `id` dials site-b at `addr`:
/// the endpoint (keep it while the connection is used) and the handshake's
/// result.
async fn dial_site_b(
    socket: std::net::UdpSocket,
    addr: std::net::SocketAddr,
    id: &Identity,
    roots: &rustls::RootCertStore,
    transport: Option<quinn::TransportConfig>,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let mut client = quinn::ClientConfig::new(tls::client_crypto(id, roots).unwrap());
    if let Some(t) = transport {
        client.transport_config(Arc::new(t));
    }
    let ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap();
    let conn = ep
        .connect_with(client, addr, "site-b.wanmig")
        .unwrap()
        .await;
    (ep, conn)
}

fn identity(cert: &std::path::Path, key: &std::path::Path) -> Identity {
    Identity {
        certs: tls::load_certs(cert).unwrap(),
        key: tls::load_key(key).unwrap(),
    }
}

/// Site B runs with a certificate (and CA) from another deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_foreign_ca_certificate_is_refused() {
    init_logging();
    let prepared = MeshBuilder::new(2).prepare().await.unwrap();
    let foreign_ca = certs::generate_ca("another deployment").unwrap();
    let foreign_b = certs::issue_site(&foreign_ca, "site-b").unwrap();
    let cd = prepared.cert_dir();
    write_pair(&cd, "site-b", &foreign_b);
    // B trusts both CAs, so only A's verification of B can fail here.
    let own_ca = std::fs::read_to_string(cd.join("ca.pem")).unwrap();
    let b_ca = cd.join("b-ca.pem");
    std::fs::write(&b_ca, format!("{own_ca}{}", foreign_ca.cert_pem)).unwrap();
    let b_cfg = prepared.config_path("site-b").to_path_buf();
    let text = std::fs::read_to_string(&b_cfg)
        .unwrap()
        .replace("certs/ca.pem", "certs/b-ca.pem");
    std::fs::write(&b_cfg, text).unwrap();

    let mesh = prepared.start().await.unwrap();
    let a = mesh.gw("site-a");
    let refused = a
        .wait_until(Duration::from_secs(30), |_| a.refusals().total >= 2)
        .await;
    assert!(refused, "A refused {:?}", a.refusals());
    let peer = &a.peer_states()[0];
    assert_ne!(peer.state, LinkState::Up);
    assert_eq!(peer.connection_id, 0, "never connected");
    let err = peer.last_error.clone().unwrap_or_default();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(a.refusals().by_reason.contains_key("tls"));
    // B saw the handshakes fail and counts them as well (when its side of
    // a failed handshake ends: waited for, not assumed done with A's).
    let b = mesh.gw("site-b");
    let counted = b
        .wait_until(Duration::from_secs(30), |_| b.refusals().total >= 1)
        .await;
    assert!(counted, "{:?}", b.refusals());
    assert_ne!(b.peer_states()[0].state, LinkState::Up);
    mesh.shutdown().await;
}

/// A client whose certificate is from another CA dials a real gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_a_foreign_ca_is_refused_by_the_acceptor() {
    init_logging();
    let mut prepared = MeshBuilder::new(2).prepare().await.unwrap();
    let a_socket = prepared.take_socket("site-a").unwrap();
    let b_addr = prepared.quic_addr("site-b");
    let cd = prepared.cert_dir();
    let foreign_ca = certs::generate_ca("another deployment").unwrap();
    let (c, k) = write_pair(
        &cd,
        "rogue-a",
        &certs::issue_site(&foreign_ca, "site-a").unwrap(),
    );
    // The rogue trusts the real CA (so it accepts B) but holds a foreign cert.
    let roots = tls::load_roots(&cd.join("ca.pem")).unwrap();
    let mesh = prepared.start().await.unwrap();

    let (_ep, res) = dial_site_b(a_socket, b_addr, &identity(&c, &k), &roots, None).await;
    // TLS 1.3: the client finishes first; the refusal arrives right after.
    if let Ok(conn) = res {
        let why = tokio::time::timeout(Duration::from_secs(30), conn.closed())
            .await
            .unwrap();
        assert!(
            why.to_string().to_lowercase().contains("certificate"),
            "{why}"
        );
    }
    let b = mesh.gw("site-b");
    let seen = b
        .wait_until(Duration::from_secs(30), |_| b.refusals().total >= 1)
        .await;
    assert!(seen, "B did not record the refusal");
    assert!(
        b.refusals().by_reason.contains_key("tls"),
        "{:?}",
        b.refusals()
    );
    assert_eq!(b.peer_states()[0].connection_id, 0);
    mesh.shutdown().await;
}

/// A server presenting a valid certificate for the wrong site: the dialer
/// refuses it (server name check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_presenting_the_wrong_site_name_is_refused_by_the_dialer() {
    init_logging();
    let mut prepared = MeshBuilder::new(2).prepare().await.unwrap();
    let b_socket = prepared.take_socket("site-b").unwrap();
    let cd = prepared.cert_dir();
    let ca = PemPair {
        cert_pem: std::fs::read_to_string(cd.join("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(cd.join("ca.key")).unwrap(),
    };
    let (c, k) = write_pair(&cd, "site-x", &certs::issue_site(&ca, "site-x").unwrap());
    let roots = tls::load_roots(&cd.join("ca.pem")).unwrap();
    let server =
        quinn::ServerConfig::with_crypto(tls::server_crypto(&identity(&c, &k), &roots).unwrap());
    let impostor = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        b_socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let acc = accepted.clone();
    let ep = impostor.clone();
    tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            if inc.await.is_ok() {
                acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let mesh = prepared.start().await.unwrap();
    let a = mesh.gw("site-a");
    assert!(
        a.wait_until(Duration::from_secs(30), |_| a.refusals().total >= 2)
            .await
    );
    let peer = &a.peer_states()[0];
    assert_ne!(peer.state, LinkState::Up);
    let err = peer.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("not valid for name \"site-b.wanmig\""),
        "{err}"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    impostor.close(0u32.into(), b"done");
    mesh.shutdown().await;
}

/// A client with a valid certificate of the deployment, for a site the
/// acceptor does not peer with, is refused after the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_naming_an_unconfigured_site_is_refused_by_the_acceptor() {
    init_logging();
    let mut prepared = MeshBuilder::new(2).prepare().await.unwrap();
    let a_socket = prepared.take_socket("site-a").unwrap();
    let b_addr = prepared.quic_addr("site-b");
    let cd = prepared.cert_dir();
    let (c, k) = {
        let ca = PemPair {
            cert_pem: std::fs::read_to_string(cd.join("ca.pem")).unwrap(),
            key_pem: std::fs::read_to_string(cd.join("ca.key")).unwrap(),
        };
        write_pair(&cd, "site-x", &certs::issue_site(&ca, "site-x").unwrap())
    };
    let roots = tls::load_roots(&cd.join("ca.pem")).unwrap();
    let mesh = prepared.start().await.unwrap();
    let (_ep, conn) = dial_site_b(a_socket, b_addr, &identity(&c, &k), &roots, None).await;
    let conn = conn.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(30), conn.closed())
        .await
        .unwrap();
    match why {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code.into_inner(),
                u64::from(close_code::UNKNOWN_SITE)
            )
        }
        other => panic!("expected an application close, got {other}"),
    }
    // B counts the refusal just after it closes the connection: wait for
    // it rather than race the close to the client.
    let b = mesh.gw("site-b");
    b.wait_until(Duration::from_secs(30), |_| {
        b.refusals().by_reason.contains_key("unknown-site")
    })
    .await;
    assert_eq!(
        b.refusals().by_reason.get("unknown-site"),
        Some(&1),
        "{:?}",
        b.refusals()
    );
    assert_ne!(b.peer_states()[0].state, LinkState::Up);
    mesh.shutdown().await;
}

/// A gateway whose own certificate does not name its site does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_to_start_with_a_certificate_for_another_site() {
    let prepared = MeshBuilder::new(2).prepare().await.unwrap();
    let path = prepared.config_path("site-a").to_path_buf();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("certs/site-a.", "certs/site-b.");
    std::fs::write(&path, text).unwrap();
    let cfg = GatewayConfig::load(&path).unwrap();
    let err = Gateway::start_on(
        cfg,
        wanmig_gateway::gateway::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap(),
    )
    .await
    .err()
    .expect("start must fail");
    assert!(matches!(err, GatewayError::Tls(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("site-a.wanmig") && msg.contains("site-b.pem"),
        "{msg}"
    );
}

/// A gateway whose page-store directory cannot be used does not start:
/// the error names the key and the path, before any migration needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_to_start_with_an_unusable_store_dir() {
    let prepared = MeshBuilder::new(2)
        .extra_config("[migration]\nstore_dir = \"store-file\"\n")
        .prepare()
        .await
        .unwrap();
    let path = prepared.config_path("site-a").to_path_buf();
    // A regular file where the directory should be.
    std::fs::write(path.parent().unwrap().join("store-file"), "not a dir").unwrap();
    let cfg = GatewayConfig::load(&path).unwrap();
    let err = Gateway::start_on(
        cfg,
        wanmig_gateway::gateway::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap(),
    )
    .await
    .err()
    .expect("start must fail");
    assert!(matches!(err, GatewayError::StoreDir { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("migration.store_dir") && msg.contains("store-file"),
        "{msg}"
    );
}

/// Each stream a peer opens may buffer up to a whole frame at this
/// gateway, so their number is bounded. A real peer (site-a's own
/// certificate) dialling site-b
/// gets `PEER_BIDI_STREAMS` bidirectional streams and no unidirectional
/// one: the next open waits, and proceeds once some of its streams end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_a_bounded_number_of_streams() {
    use wanmig_gateway::peering::StreamKind;
    use wanmig_gateway::transport_tuning::PEER_BIDI_STREAMS;
    init_logging();
    let mut prepared = MeshBuilder::new(2).prepare().await.unwrap();
    let a_socket = prepared.take_socket("site-a").unwrap();
    let b_addr = prepared.quic_addr("site-b");
    let cd = prepared.cert_dir();
    let id = identity(&cd.join("site-a.pem"), &cd.join("site-a.key"));
    let roots = tls::load_roots(&cd.join("ca.pem")).unwrap();
    let mesh = prepared.start().await.unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    let (_ep, conn) = dial_site_b(a_socket, b_addr, &id, &roots, Some(transport)).await;
    let conn = conn.expect("site-b accepts site-a");
    let b = mesh.gw("site-b");
    assert!(b.wait_all_up(Duration::from_secs(30)).await);

    // Overlay control streams: site-b reads each until it ends.
    let mut streams = Vec::new();
    for i in 0..PEER_BIDI_STREAMS {
        let (mut send, recv) = tokio::time::timeout(Duration::from_secs(30), conn.open_bi())
            .await
            .unwrap_or_else(|_| panic!("stream {i} of {PEER_BIDI_STREAMS} is allowed"))
            .unwrap();
        send.write_all(&[u8::from(StreamKind::Overlay)])
            .await
            .unwrap();
        streams.push((send, recv));
    }
    let extra = tokio::time::timeout(Duration::from_secs(3), conn.open_bi()).await;
    assert!(
        extra.is_err(),
        "site-b let site-a open more than {PEER_BIDI_STREAMS} streams"
    );
    let uni = tokio::time::timeout(Duration::from_secs(1), conn.open_uni()).await;
    assert!(
        uni.is_err(),
        "site-b let site-a open a unidirectional stream"
    );

    // The limit is a window, not a dead connection: ending streams makes
    // room for more. (quinn announces new credit once more than an eighth
    // of the limit is free, to save frames.)
    let waiting = tokio::spawn({
        let conn = conn.clone();
        async move { conn.open_bi().await }
    });
    let mut ended = Vec::new();
    for _ in 0..=PEER_BIDI_STREAMS / 8 {
        let (mut send, recv) = streams.pop().unwrap();
        send.finish().unwrap();
        ended.push(recv);
    }
    let opened = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("a stream opens once another ended")
        .unwrap();
    assert!(opened.is_ok(), "{:?}", opened.err());
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    conn.close(0u32.into(), b"done");
    mesh.shutdown().await;
}
