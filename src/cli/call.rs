//! The `get` and `stream` commands: calls through a gateway, printed as Confluence's JSON.

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::{
    output::{CommandError, Format, Progress, RecordWriter},
    parse::{BadValue, Dur},
};
use audit_gateway::pb::{
    self, TimeUnit, audit_service_client::AuditServiceClient, convert::ToJson,
};

/// How the client commands reach a gateway.
#[derive(Clone, Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The gateway's address (http://host:port).
    #[arg(
        long,
        env = "AUDIT_GATEWAY_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) gateway: String,

    /// CA that signed an `https://` gateway's certificate (PEM).
    #[arg(long, env = "AUDIT_GATEWAY_TLS_CA")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for a gateway that requires one (mTLS), with --tls-key.
    #[arg(long, env = "AUDIT_GATEWAY_CLIENT_CERT", requires = "client_key")]
    pub(crate) client_cert: Option<std::path::PathBuf>,

    /// Key of --client-cert (PEM).
    #[arg(long, env = "AUDIT_GATEWAY_CLIENT_KEY", requires = "client_cert")]
    pub(crate) client_key: Option<std::path::PathBuf>,

    /// `authorization` metadata to send: `Bearer <token>` for a gateway with caller
    /// tokens, or a Confluence credential for one run with --auth-passthrough.
    #[arg(long, env = "AUDIT_GATEWAY_AUTHORIZATION", hide_env_values = true)]
    pub(crate) authorization: Option<SecretString>,
}

/// How the `get` and `stream` commands reach a gateway, and the window they ask for.
#[derive(Clone, Debug, Args)]
pub(crate) struct CallArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,

    /// How many `units` back.
    #[arg(long)]
    pub(crate) number: Option<i64>,

    /// NANOS … CENTURIES (default MONTHS).
    #[arg(long, value_parser = parse_units)]
    pub(crate) units: Option<TimeUnit>,

    /// Confluence's searchString.
    #[arg(long = "search")]
    pub(crate) search: Option<String>,
}

/// `get` settings.
#[derive(Clone, Debug, Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    pub(crate) call: CallArgs,

    /// Offset of the first record.
    #[arg(long)]
    pub(crate) start: Option<i32>,

    /// Page size.
    #[arg(long)]
    pub(crate) limit: Option<i32>,

    /// Ask the gateway to refetch instead of serving its cache.
    #[arg(long)]
    pub(crate) no_cache: bool,

    /// Deadline of the call.
    #[arg(long, default_value_t = Dur(Duration::from_secs(30)))]
    pub(crate) timeout: Dur,

    /// The whole page as Confluence's JSON (json), or its records as NDJSON, CSV or a table.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub(crate) format: Format,

    /// With --format ecs: each document's `event.original` holds the record's JSON.
    #[arg(long)]
    pub(crate) ecs_original: bool,

    /// Write to this file instead of standard output.
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
}

/// `stream` settings.
#[derive(Clone, Debug, Args)]
pub(crate) struct StreamArgs {
    #[command(flatten)]
    pub(crate) call: CallArgs,

    /// Records per upstream page (1..=1000).
    #[arg(long)]
    pub(crate) page_size: Option<i32>,

    /// Stop after this many records.
    #[arg(long)]
    pub(crate) max_records: Option<i64>,

    /// Continue after the message that carried this token (printed to stderr at the end).
    #[arg(long, default_value = "")]
    pub(crate) resume_token: String,

    /// How records are written.
    #[arg(long, value_enum, default_value_t = Format::Ndjson)]
    pub(crate) format: Format,

    /// With --format ecs: each document's `event.original` holds the record's JSON.
    #[arg(long)]
    pub(crate) ecs_original: bool,

    /// Write to this file instead of standard output.
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
}

/// The unit a name such as `DAYS` or `half_days` gives (the proto enum's names
/// without their `TIME_UNIT_` prefix).
fn parse_units(s: &str) -> Result<TimeUnit, BadValue> {
    TimeUnit::from_str_name(&format!("TIME_UNIT_{}", s.to_ascii_uppercase()))
        .filter(|u| *u != TimeUnit::Unspecified)
        .ok_or_else(|| {
            let names: Vec<&str> = (1..)
                .map_while(|n| TimeUnit::try_from(n).ok())
                .map(|u| u.as_str_name().trim_start_matches("TIME_UNIT_"))
                .collect();
            BadValue(format!("expected one of {}", names.join(" ")))
        })
}

/// A client of the gateway `call` names.
pub(crate) async fn connect(
    call: &ConnectArgs,
) -> Result<AuditServiceClient<Channel>, CommandError> {
    let gateway = &call.gateway;
    let mut endpoint =
        Endpoint::from_shared(gateway.to_owned()).map_err(|e| format!("--gateway: {e}"))?;
    if gateway.starts_with("https://") {
        let read = |p: &std::path::Path, flag: &str| {
            std::fs::read(p).map_err(|e| format!("{flag}: cannot read {}: {e}", p.display()))
        };
        let ca = call
            .tls_ca
            .as_deref()
            .ok_or("--tls-ca: needed for an https:// gateway")?;
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?));
        if let (Some(cert), Some(key)) = (&call.client_cert, &call.client_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--client-cert")?,
                read(key, "--client-key")?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("--tls-ca: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to the gateway at {gateway}: {e}"))?;
    Ok(AuditServiceClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Adds `authorization` metadata, if any, to `request`.
pub(crate) fn authorize<T>(
    request: &mut Request<T>,
    authorization: Option<&SecretString>,
) -> Result<(), CommandError> {
    if let Some(auth) = authorization {
        let value = MetadataValue::try_from(auth.expose_secret())
            .map_err(|_| "--authorization: not a valid metadata value".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(())
}

/// Standard output, or `path` created anew.
pub(crate) fn open_output(path: Option<&Path>) -> Result<Box<dyn Write>, CommandError> {
    Ok(match path {
        Some(p) => Box::new(io::BufWriter::new(File::create(p).map_err(|e| {
            CommandError::output(format!("--output {}: {e}", p.display()))
        })?)),
        None => Box::new(io::BufWriter::new(io::stdout().lock())),
    })
}

/// Streams a window as `args` say to `--output`; returns the number of records and the
/// last resume token. A failed call says where to resume from.
pub(crate) async fn stream(args: &StreamArgs) -> Result<(u64, String), CommandError> {
    stream_to(args, open_output(args.output.as_deref())?).await
}

/// [`stream`], writing to `out`.
pub(crate) async fn stream_to(
    args: &StreamArgs,
    out: impl Write,
) -> Result<(u64, String), CommandError> {
    let call = &args.call;
    let mut client = connect(&call.connect).await?;
    let mut request = Request::new(pb::StreamSinceRequest {
        number: call.number,
        units: call.units.map_or(0, |u| u as i32),
        search_string: call.search.clone(),
        page_size: args.page_size,
        max_records: args.max_records,
        resume_token: args.resume_token.clone(),
    });
    authorize(&mut request, call.connect.authorization.as_ref())?;
    let mut messages = client
        .stream_since(request)
        .await
        .map_err(|s| CommandError::status(&s, ""))?
        .into_inner();
    let format = args.format.with_ecs_original(args.ecs_original)?;
    let mut out = RecordWriter::new(out, format, false);
    let mut progress = Progress::new();
    let (mut count, mut token) = (0, String::new());
    let ended = loop {
        match messages.message().await {
            Ok(Some(message)) => {
                out.write(&message.records).map_err(CommandError::output)?;
                count += message.records.len() as u64;
                progress.update(&message.records, false);
                token = message.resume_token;
            }
            Ok(None) => break Ok(()),
            // Say where to resume from, then the failure.
            Err(s) => {
                break Err(CommandError::status(
                    &s,
                    format_args!(" (resume with --resume-token '{token}')"),
                ));
            }
        }
    };
    progress.finish();
    out.flush().map_err(CommandError::output)?;
    ended.map(|()| (count, token))
}

/// Calls `GetSince` as `args` say and writes the page (or its records) in `--format`.
pub(crate) async fn get(args: &GetArgs) -> Result<(), CommandError> {
    let format = args.format.with_ecs_original(args.ecs_original)?;
    let page = get_page(args).await?;
    let mut out = RecordWriter::new(open_output(args.output.as_deref())?, format, false);
    if args.format == Format::Json {
        let json = serde_json::to_string_pretty(&page.to_json())
            .map_err(|e| CommandError::other(e.to_string()))?;
        writeln!(out.get_mut(), "{json}").map_err(CommandError::output)?;
    } else {
        out.write(&page.results).map_err(CommandError::output)?;
    }
    out.flush().map_err(CommandError::output)
}

/// The page `args` ask for.
pub(crate) async fn get_page(args: &GetArgs) -> Result<pb::GetSinceResponse, CommandError> {
    let call = &args.call;
    let mut client = connect(&call.connect).await?;
    let mut request = Request::new(pb::GetSinceRequest {
        number: call.number,
        units: call.units.map_or(0, |u| u as i32),
        search_string: call.search.clone(),
        start: args.start,
        limit: args.limit,
    });
    request.set_timeout(args.timeout.0);
    if args.no_cache {
        request
            .metadata_mut()
            .insert("cache-control", MetadataValue::from_static("no-cache"));
    }
    authorize(&mut request, call.connect.authorization.as_ref())?;
    Ok(client
        .get_since(request)
        .await
        .map_err(|s| CommandError::status(&s, ""))?
        .into_inner())
}

/// `retention` settings.
#[derive(Clone, Debug, Args)]
pub(crate) struct RetentionArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

/// Calls `GetRetention` and prints Confluence's retention period as one JSON line:
/// `number`, `units` and, but for FOREVER, `seconds`.
pub(crate) async fn retention(args: &RetentionArgs) -> Result<(), CommandError> {
    let mut client = connect(&args.connect).await?;
    let mut request = Request::new(pb::GetRetentionRequest {});
    authorize(&mut request, args.connect.authorization.as_ref())?;
    let r = client
        .get_retention(request)
        .await
        .map_err(|s| CommandError::status(&s, ""))?
        .into_inner();
    let units = pb::TimeUnit::try_from(r.units)
        .map(|u| u.as_str_name().trim_start_matches("TIME_UNIT_").to_owned())
        .unwrap_or_else(|_| r.units.to_string());
    let mut line = serde_json::json!({ "number": r.number, "units": units });
    if let Some(p) = r.period {
        line["seconds"] = serde_json::Value::from(p.seconds);
    }
    println!("{line}");
    Ok(())
}
