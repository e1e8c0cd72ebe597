//! `wanmig netem ctl` against a running relay's control endpoint.

use std::sync::Arc;

use wanmig_netem::cli::{run, CtlAction, CtlArgs, NetemArgs, NetemCommand};
use wanmig_netem::control;
use wanmig_netem::{LinkParams, RelayConfig, UdpRelay};

#[tokio::test]
async fn ctl_cuts_and_restores_a_running_relay() {
    let relay = UdpRelay::start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: "127.0.0.1:9".parse().unwrap(),
        forward: LinkParams::ideal(),
        reverse: LinkParams::ideal(),
        seed: 0,
    })
    .await
    .unwrap();
    let server = control::serve("127.0.0.1:0".parse().unwrap(), Arc::new(relay.clone()))
        .await
        .unwrap();
    let ctl = |action| NetemArgs {
        command: NetemCommand::Ctl(CtlArgs {
            control: server.local_addr(),
            action,
        }),
    };
    run(ctl(CtlAction::Cut)).await.unwrap();
    assert!(relay.is_cut());
    let stats = control::request(server.local_addr(), "stats")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["cut"], true, "{stats}");
    run(ctl(CtlAction::Restore)).await.unwrap();
    assert!(!relay.is_cut());
    run(ctl(CtlAction::Stats)).await.unwrap();
    drop(server);
    relay.shutdown().await;
}

#[tokio::test]
async fn ctl_without_a_server_says_what_to_start() {
    // A port that nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = run(NetemArgs {
        command: NetemCommand::Ctl(CtlArgs {
            control: port,
            action: CtlAction::Stats,
        }),
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("--control"), "{e}");
}
