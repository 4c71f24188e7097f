//! The `get` command: one `GetSince` call through a gateway, printed as JSON.

use tonic::{Request, metadata::MetadataValue, transport::Endpoint};

use crate::{
    config::GetArgs,
    pb::{self, audit_service_client::AuditServiceClient, json::ToJson},
};

/// Calls `GetSince` as `args` say and returns the page as pretty JSON, or the status
/// as one line (`CODE: message`).
pub async fn get(args: &GetArgs) -> Result<String, String> {
    let endpoint = Endpoint::from_shared(args.gateway.clone())
        .map_err(|e| format!("--gateway: {e}"))?
        .connect_timeout(args.timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to the gateway at {}: {e}", args.gateway))?;
    let mut client = AuditServiceClient::new(channel);
    let mut request = Request::new(pb::GetSinceRequest {
        number: args.number,
        units: args.units.map_or(0, |u| unit_to_proto(u) as i32),
        search_string: args.search.clone(),
        start: args.start,
        limit: args.limit,
    });
    request.set_timeout(args.timeout);
    if args.no_cache {
        request
            .metadata_mut()
            .insert("cache-control", MetadataValue::from_static("no-cache"));
    }
    if let Some(auth) = &args.authorization {
        let value = MetadataValue::try_from(auth.as_str())
            .map_err(|_| "--authorization: not a valid metadata value".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
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
