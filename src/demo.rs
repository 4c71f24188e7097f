//! The `demo` command: a simulated Confluence and a gateway in front of it on local
//! ports, one query through it to show it works, then serving until Ctrl-C.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::{
    config::{CacheArgs, CallArgs, DemoArgs, GetArgs, ServeArgs, UpstreamArgs, parse_base_url},
    credential::Credential,
    server::{self, ShutdownSettings},
    simulator::{Simulator, SimulatorConfig},
};

const DEMO_EMAIL: &str = "demo@example.com";
const DEMO_TOKEN: &str = "demo-api-token";

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let signal = server::shutdown_signal();
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind the simulator: {e}"))?;
    let sim = Simulator::start(
        SimulatorConfig {
            records: args.records,
            required_authorization: Some(
                Credential::basic(DEMO_EMAIL, DEMO_TOKEN)?
                    .expose()
                    .to_owned(),
            ),
            latency: Duration::from_millis(20),
            ..SimulatorConfig::default()
        },
        sim_listener,
    )
    .await
    .map_err(|e| format!("cannot start the simulator: {e}"))?;
    println!(
        "simulated Confluence: {} records at {}",
        args.records,
        sim.base_url()
    );

    let serve = ServeArgs {
        listen: args.listen,
        confluence_url: parse_base_url(&sim.base_url())?,
        upstream: UpstreamArgs {
            confluence_email: Some(DEMO_EMAIL.into()),
            confluence_api_token: Some(DEMO_TOKEN.into()),
            confluence_bearer_token: None,
            auth_passthrough: false,
            upstream_timeout: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(2),
            upstream_retries: 4,
            upstream_backoff: Duration::from_millis(100),
            upstream_max_backoff: Duration::from_secs(5),
            upstream_max_body: 64 << 20,
        },
        cache: CacheArgs {
            cache_ttl: Duration::from_secs(60),
            cache_max_bytes: 16 << 20,
            credential_salt: None,
            redis_url: None,
            redis_timeout: Duration::from_millis(50),
            redis_pause: Duration::from_secs(5),
            redis_key_prefix: "audit-gateway".into(),
        },
        stream_prefetch: 16,
        metrics_listen: None,
        drain_delay: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(5),
    };
    let service = server::build_service(&serve)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(server::run(
        service,
        listener,
        async move {
            let _ = stop_rx.await;
        },
        ShutdownSettings {
            drain_delay: Duration::ZERO,
            timeout: Duration::from_secs(5),
        },
    ));
    println!("gateway: confluence.audit.v1.AuditService on {addr}");

    let call = CallArgs {
        gateway: format!("http://{addr}"),
        authorization: None,
        number: Some(1),
        units: Some(crate::audit::TimeUnit::Days),
        search: None,
    };
    let get = GetArgs {
        call: call.clone(),
        start: None,
        limit: Some(2),
        no_cache: false,
        timeout: Duration::from_secs(10),
    };
    let cold = Instant::now();
    let page = crate::client::get(&get).await?;
    let cold = cold.elapsed();
    let warm = Instant::now();
    crate::client::get(&get).await?;
    let warm = warm.elapsed();
    println!("GetSince(number=1, units=DAYS, limit=2) answered:\n{page}");
    println!(
        "first call {cold:.1?} (upstream fetch), second {warm:.1?} (page cache); upstream requests so far: {}",
        sim.request_count()
    );
    let streamed = Instant::now();
    let stream_args = crate::config::StreamArgs {
        call,
        page_size: Some(500),
        max_records: None,
        resume_token: String::new(),
    };
    let (count, _) = crate::client::stream(&stream_args, &mut std::io::sink()).await?;
    println!(
        "StreamSince(number=1, units=DAYS, page_size=500) delivered {count} records in {:.1?}",
        streamed.elapsed()
    );
    println!(
        "query it yourself:\n  cargo run -- get --gateway http://{addr} --number 1 --units DAYS --limit 3\n  \
         cargo run -- stream --gateway http://{addr} --number 1 --units DAYS --max-records 5\n  \
         grpcurl -plaintext -d '{{\"number\":1,\"units\":\"TIME_UNIT_DAYS\",\"limit\":3}}' {addr} confluence.audit.v1.AuditService/GetSince"
    );
    if !args.once {
        println!("serving until Ctrl-C");
        signal.await;
    }
    let _ = stop_tx.send(());
    gateway
        .await
        .map_err(|e| format!("gateway task failed: {e}"))??;
    sim.shutdown();
    Ok(())
}
