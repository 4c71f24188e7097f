//! The `get` and `stream` commands: calls through a gateway, printed as Confluence's JSON.

use std::io::Write;

use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use crate::{
    config::{GetArgs, Secret, StreamArgs},
    pb::{self, audit_service_client::AuditServiceClient, json::ToJson},
};

async fn connect(gateway: &str) -> Result<AuditServiceClient<Channel>, String> {
    let channel = Endpoint::from_shared(gateway.to_owned())
        .map_err(|e| format!("--gateway: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to the gateway at {gateway}: {e}"))?;
    Ok(AuditServiceClient::new(channel).max_decoding_message_size(64 << 20))
}

fn authorize<T>(request: &mut Request<T>, authorization: Option<&Secret>) -> Result<(), String> {
    if let Some(auth) = authorization {
        let value = MetadataValue::try_from(auth.expose())
            .map_err(|_| "--authorization: not a valid metadata value".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(())
}

/// Streams a window, writing one JSON record per line to `out`; returns the number of
/// records and the last resume token.
pub async fn stream(args: &StreamArgs, out: &mut impl Write) -> Result<(u64, String), String> {
    let call = &args.call;
    let mut client = connect(&call.gateway).await?;
    let mut request = Request::new(pb::StreamSinceRequest {
        number: call.number,
        units: call.units.map_or(0, |u| unit_to_proto(u) as i32),
        search_string: call.search.clone(),
        page_size: args.page_size,
        max_records: args.max_records,
        resume_token: args.resume_token.clone(),
    });
    authorize(&mut request, call.authorization.as_ref())?;
    let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    let mut messages = client
        .stream_since(request)
        .await
        .map_err(status)?
        .into_inner();
    let (mut count, mut token) = (0, String::new());
    loop {
        let message = match messages.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok((count, token)),
            // Say where to resume from, then the failure.
            Err(s) => {
                return Err(format!(
                    "{} (resume with --resume-token '{token}')",
                    status(s)
                ));
            }
        };
        for record in &message.records {
            writeln!(out, "{}", record.to_json()).map_err(|e| format!("output: {e}"))?;
            count += 1;
        }
        token = message.resume_token;
    }
}

/// Calls `GetSince` as `args` say and returns the page as pretty JSON, or the status
/// as one line (`CODE: message`).
pub async fn get(args: &GetArgs) -> Result<String, String> {
    let call = &args.call;
    let mut client = connect(&call.gateway).await?;
    let mut request = Request::new(pb::GetSinceRequest {
        number: call.number,
        units: call.units.map_or(0, |u| unit_to_proto(u) as i32),
        search_string: call.search.clone(),
        start: args.start,
        limit: args.limit,
    });
    request.set_timeout(args.timeout);
    if args.no_cache {
        request
            .metadata_mut()
            .insert("cache-control", MetadataValue::from_static("no-cache"));
    }
    authorize(&mut request, call.authorization.as_ref())?;
    let page = client
        .get_since(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    serde_json::to_string_pretty(&page.to_json()).map_err(|e| e.to_string())
}

/// The protobuf enum value of a unit.
pub fn unit_to_proto(u: crate::audit::TimeUnit) -> pb::TimeUnit {
    use crate::audit::TimeUnit as T;
    match u {
        T::Nanos => pb::TimeUnit::Nanos,
        T::Micros => pb::TimeUnit::Micros,
        T::Millis => pb::TimeUnit::Millis,
        T::Seconds => pb::TimeUnit::Seconds,
        T::Minutes => pb::TimeUnit::Minutes,
        T::Hours => pb::TimeUnit::Hours,
        T::HalfDays => pb::TimeUnit::HalfDays,
        T::Days => pb::TimeUnit::Days,
        T::Weeks => pb::TimeUnit::Weeks,
        T::Months => pb::TimeUnit::Months,
        T::Years => pb::TimeUnit::Years,
        T::Decades => pb::TimeUnit::Decades,
        T::Centuries => pb::TimeUnit::Centuries,
    }
}
