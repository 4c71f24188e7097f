//! The `demo` command: a simulated Confluence and a gateway in front of it on local
//! ports, one query through it to show it works, then serving until Ctrl-C.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use clap::Args;
use confluence_sim::{Simulator, SimulatorConfig, SimulatorHandle};
use tokio::net::TcpListener;

use super::{
    call::{self, CallArgs, ConnectArgs, GetArgs, StreamArgs},
    output::{CommandError, Format},
    parse::Dur,
};
use audit_gateway::{
    Gateway, GatewayConfig, ServerConfig, UpstreamAuth,
    pb::{TimeUnit, convert::ToJson},
    shutdown_signal,
};
use base64::{Engine, engine::general_purpose::STANDARD};

const DEMO_EMAIL: &str = "demo@example.com";
const DEMO_TOKEN: &str = "demo-api-token";

/// `demo` settings.
#[derive(Clone, Debug, Args)]
pub(crate) struct DemoArgs {
    /// Address the demo gateway serves gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// Records in the simulated log.
    #[arg(long, default_value_t = 5000)]
    records: usize,

    /// Stop after the first query instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
}

/// Runs the demo.
pub(crate) async fn run(args: DemoArgs) -> Result<(), CommandError> {
    let signal = shutdown_signal();
    let sim = simulator(args.records).await?;
    println!(
        "simulated Confluence: {} records at {}",
        args.records,
        sim.base_url()
    );
    let gateway = Gateway::bind(GatewayConfig {
        listen: args.listen,
        auth: UpstreamAuth::Basic {
            email: DEMO_EMAIL.into(),
            api_token: DEMO_TOKEN.into(),
        },
        server: ServerConfig {
            shutdown_timeout: Duration::from_secs(5),
            ..ServerConfig::DEFAULT
        },
        ..GatewayConfig::new(sim.base_url())
    })
    .await
    .map_err(|e| e.to_string())?;
    let addr = gateway.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(gateway.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    println!("gateway: confluence.audit.v1.AuditService on {addr}");
    show_calls(addr, &sim).await?;
    if !args.once {
        println!("serving until Ctrl-C");
        signal.await;
    }
    let _ = stop_tx.send(());
    gateway
        .await
        .map_err(|e| format!("gateway task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    sim.shutdown();
    Ok(())
}

/// A simulated Confluence of `records` on a free loopback port, a live log that
/// accepts the demo's credential only.
async fn simulator(records: usize) -> Result<SimulatorHandle, CommandError> {
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind the simulator: {e}"))?;
    let sim = Simulator::start(
        SimulatorConfig {
            records,
            // What the gateway sends for --confluence-email and --confluence-api-token.
            required_authorization: Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{DEMO_EMAIL}:{DEMO_TOKEN}"))
            )),
            latency: Duration::from_millis(20),
            // A live log, so a follower shows new records arriving.
            live: Some(confluence_sim::Live {
                per_second: 2.0,
                burst: 3,
            }),
            ..SimulatorConfig::default()
        },
        sim_listener,
    )
    .await
    .map_err(|e| format!("cannot start the simulator: {e}"))?;
    Ok(sim)
}

/// A page twice (from Confluence, then from the cache) and a stream through the
/// gateway at `addr`, printed with their times; then how to query it by hand.
async fn show_calls(addr: SocketAddr, sim: &SimulatorHandle) -> Result<(), CommandError> {
    let call = CallArgs {
        connect: ConnectArgs {
            gateway: format!("http://{addr}"),
            tls_ca: None,
            client_cert: None,
            client_key: None,
            authorization: None,
        },
        number: Some(1),
        units: Some(TimeUnit::Days),
        search: None,
    };
    let get = GetArgs {
        call: call.clone(),
        start: None,
        limit: Some(2),
        no_cache: false,
        timeout: Dur(Duration::from_secs(10)),
        format: Format::Json,
        ecs_original: false,
        output: None,
    };
    let cold = Instant::now();
    let page = call::get_page(&get).await.map_err(|e| e.to_string())?;
    let cold = cold.elapsed();
    let warm = Instant::now();
    call::get_page(&get).await.map_err(|e| e.to_string())?;
    let warm = warm.elapsed();
    let page = serde_json::to_string_pretty(&page.to_json()).map_err(|e| e.to_string())?;
    println!("GetSince(number=1, units=DAYS, limit=2) answered:\n{page}");
    println!(
        "first call {cold:.1?} (upstream fetch), second {warm:.1?} (page cache); upstream requests so far: {}",
        sim.request_count()
    );
    let streamed = Instant::now();
    let stream_args = StreamArgs {
        call,
        page_size: Some(500),
        max_records: None,
        resume_token: String::new(),
        format: Format::Ndjson,
        ecs_original: false,
        output: None,
    };
    let (count, _) = call::stream_to(&stream_args, std::io::sink())
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "StreamSince(number=1, units=DAYS, page_size=500) delivered {count} records in {:.1?}",
        streamed.elapsed()
    );
    println!(
        "query it yourself:\n  cargo run -- get --gateway http://{addr} --number 1 --units DAYS --limit 3\n  \
         cargo run -- stream --gateway http://{addr} --number 1 --units DAYS --max-records 5 --format table\n  \
         cargo run -- follow --gateway http://{addr} --since 10m --poll-interval 1s --checkpoint-file audit.checkpoint --output audit.ndjson\n  \
         grpcurl -plaintext -d '{{\"number\":1,\"units\":\"TIME_UNIT_DAYS\",\"limit\":3}}' {addr} confluence.audit.v1.AuditService/GetSince"
    );
    Ok(())
}
