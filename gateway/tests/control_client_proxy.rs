//! The control client never hands its bearer token to an HTTP proxy and
//! never talks to a non-loopback address. In a test binary of its own:
//! it sets the proxy variables for the whole process.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use wanmig_gateway::control_client::{ClientError, ControlClient};

#[tokio::test]
async fn the_token_never_goes_to_a_proxy() {
    // A "proxy" that would receive the request (and its Authorization
    // header) if the client honoured the proxy variables.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        std::env::set_var(var, &proxy_url);
    }
    for var in ["NO_PROXY", "no_proxy"] {
        std::env::remove_var(var);
    }
    // A loopback port nothing listens on.
    let gateway: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = ControlClient::new(gateway, "secret-token".into()).unwrap();
    let err = client.status().await.unwrap_err();
    assert!(
        matches!(err, ClientError::NotRunning { .. }),
        "the request did not go straight to {gateway}: {err}"
    );
    // Give a proxied connection time to show up, then check none came.
    tokio::time::sleep(Duration::from_millis(200)).await;
    match proxy.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("the client connected to the proxy (from {from})"),
        Err(e) => panic!("accept on the proxy socket: {e}"),
    }
}

#[test]
fn a_non_loopback_address_is_refused_before_anything_is_sent() {
    for addr in ["192.0.2.1:7000", "[2001:db8::1]:7000", "0.0.0.0:7000"] {
        let addr: SocketAddr = addr.parse().unwrap();
        let err = ControlClient::new(addr, "t".into()).unwrap_err();
        assert!(
            matches!(err, ClientError::NotLoopback { .. }),
            "{addr}: {err}"
        );
        assert!(err.to_string().contains("loopback"), "{err}");
    }
    let dir = std::env::temp_dir();
    let err =
        ControlClient::with_token_file("198.51.100.7:7000".parse().unwrap(), &dir).unwrap_err();
    assert!(matches!(err, ClientError::NotLoopback { .. }), "{err}");
}
