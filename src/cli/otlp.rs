//! `follow --otlp-logs-endpoint`: each record as an OpenTelemetry log record, one
//! OTLP/gRPC `LogsService/Export` per `Follow` message, sent again until the receiver
//! acknowledges it; the shipper writes its checkpoint only after that acknowledgement.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client::LogsServiceClient,
    },
    common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
    },
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use serde_json::Value as Json;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tonic_types::StatusExt;

use super::output::CommandError;
use audit_gateway::pb::{self, convert::ToJson};

/// The instrumentation scope the log records are sent under.
const SCOPE: &str = "audit-gateway.follow";
/// Longest pause between two attempts at one batch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one Export may take before it counts as failed (and is sent again).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `follow` sends records as OpenTelemetry logs instead of writing them.
#[derive(Clone, Debug, Default, Args)]
pub(crate) struct OtlpArgs {
    /// Send each record as an OpenTelemetry log record over OTLP/gRPC to this receiver
    /// (e.g. http://otel-collector:4317) instead of writing it to an output; the
    /// checkpoint advances only after the receiver acknowledged the records.
    #[arg(long, env = "AUDIT_GATEWAY_OTLP_LOGS_ENDPOINT", conflicts_with_all = ["output", "format"])]
    pub(crate) otlp_logs_endpoint: Option<String>,

    /// CA that signed an https:// --otlp-logs-endpoint's certificate (PEM).
    #[arg(
        long,
        env = "AUDIT_GATEWAY_OTLP_LOGS_CA",
        requires = "otlp_logs_endpoint"
    )]
    pub(crate) otlp_logs_ca: Option<PathBuf>,
}

/// A client of one OTLP logs receiver.
pub(crate) struct LogsExporter {
    client: LogsServiceClient<Channel>,
    endpoint: String,
}

impl LogsExporter {
    /// A client of `args`' endpoint, `None` without one. It connects at the first Export,
    /// so a receiver that is down at start is waited for like one that goes down later.
    pub(crate) fn new(args: &OtlpArgs) -> Result<Option<Self>, CommandError> {
        let Some(endpoint) = &args.otlp_logs_endpoint else {
            return Ok(None);
        };
        let bad = |e: &dyn std::fmt::Display| format!("--otlp-logs-endpoint {endpoint}: {e}");
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(bad(&"not an http:// or https:// URL").into());
        }
        let mut channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(EXPORT_TIMEOUT);
        if endpoint.starts_with("https://") {
            let ca = args
                .otlp_logs_ca
                .as_deref()
                .ok_or("--otlp-logs-ca: needed for an https:// --otlp-logs-endpoint")?;
            let pem = std::fs::read(ca)
                .map_err(|e| format!("--otlp-logs-ca: cannot read {}: {e}", ca.display()))?;
            channel = channel
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| format!("--otlp-logs-ca: {e}"))?;
        }
        Ok(Some(Self {
            client: LogsServiceClient::new(channel.connect_lazy()),
            endpoint: endpoint.clone(),
        }))
    }

    /// Sends `records` as one Export until the receiver acknowledges all of them, waiting
    /// 1 s doubling to 30 s between attempts while it is unreachable or asks to wait; an
    /// answer no retry cures ends the command.
    pub(crate) async fn ship(&mut self, records: &[pb::AuditRecord]) -> Result<(), CommandError> {
        let request = export_request(records, SystemTime::now());
        let mut backoff = Duration::from_secs(1);
        loop {
            let status = match self.client.export(request.clone()).await {
                Ok(response) => return self.accepted(response.into_inner(), records.len()),
                Err(status) => status,
            };
            if !retryable(&status) {
                return Err(CommandError::status(
                    &status,
                    format_args!(
                        " (the OTLP receiver at {} refused the export; not retried)",
                        self.endpoint
                    ),
                ));
            }
            // A receiver that says how long to wait (RetryInfo, as OTLP allows) is heeded.
            let wait = status
                .get_error_details()
                .retry_info()
                .and_then(|r| r.retry_delay)
                .map_or(backoff, |d| d.min(MAX_BACKOFF));
            eprintln!(
                "OTLP export to {}: {:?}: {}; sending the same {} records again in {wait:?}",
                self.endpoint,
                status.code(),
                status.message(),
                records.len()
            );
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A success answer: whole, or partial with nothing rejected. Rejected records end
    /// the command: OTLP forbids sending them again, and advancing would claim them.
    fn accepted(&self, answer: ExportLogsServiceResponse, sent: usize) -> Result<(), CommandError> {
        match answer.partial_success {
            Some(p) if p.rejected_log_records > 0 => Err(CommandError::output(format!(
                "the OTLP receiver at {} rejected {} of {sent} log records ({}); the checkpoint \
                 stays before them, so a new run sends the batch again",
                self.endpoint, p.rejected_log_records, p.error_message
            ))),
            Some(p) if !p.error_message.is_empty() => {
                eprintln!(
                    "OTLP export to {}: accepted with a warning: {}",
                    self.endpoint, p.error_message
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Whether sending the batch again may succeed: the statuses OTLP names retryable, and
/// any status the client made itself (the receiver never answered: refused, cut or
/// timed-out connections).
fn retryable(s: &tonic::Status) -> bool {
    let from_transport = std::error::Error::source(s).is_some();
    from_transport
        || matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Cancelled
                | Code::Aborted
                | Code::OutOfRange
                | Code::DataLoss
        )
}

/// One Export of `records`, observed at `now`: one resource (`service.name`), one scope.
fn export_request(records: &[pb::AuditRecord], now: SystemTime) -> ExportLogsServiceRequest {
    let observed = nanos(now);
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![text("service.name", "audit-gateway")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                log_records: records.iter().map(|r| log_record(r, observed)).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A record as a log record: its JSON as the body, its date as the time, INFO, and the
/// fields a SIEM looks for as attributes (empty ones left out).
fn log_record(r: &pb::AuditRecord, observed_time_unix_nano: u64) -> LogRecord {
    let author = r.author.as_ref();
    let user_id = author.and_then(|a| a.account_id.as_deref().or(a.user_key.as_deref()));
    let attributes = [
        ("event.action", Some(r.summary.as_str())),
        ("user.id", user_id),
        ("user.full_name", author.map(|a| a.display_name.as_str())),
        ("source.ip", Some(r.remote_address.as_str())),
        ("confluence.audit.category", Some(r.category.as_str())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| text(k, v)))
    .collect();
    LogRecord {
        time_unix_nano: u64::try_from(r.creation_date).map_or(0, |ms| ms.saturating_mul(1_000_000)),
        observed_time_unix_nano,
        severity_number: SeverityNumber::Info as i32,
        severity_text: "INFO".to_owned(),
        body: Some(any_value(&r.to_json())),
        attributes,
        ..Default::default()
    }
}

/// A JSON value as an OTLP value: objects as key-value lists (in their order), arrays as
/// arrays, integers as ints (beyond i64, doubles), null as the empty value.
fn any_value(v: &Json) -> AnyValue {
    let value = match v {
        Json::Null => None,
        Json::Bool(b) => Some(Value::BoolValue(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Some(Value::IntValue(i)),
            None => n.as_f64().map(Value::DoubleValue),
        },
        Json::String(s) => Some(Value::StringValue(s.clone())),
        Json::Array(items) => Some(Value::ArrayValue(ArrayValue {
            values: items.iter().map(any_value).collect(),
        })),
        Json::Object(map) => Some(Value::KvlistValue(KeyValueList {
            values: map
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(any_value(v)),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    AnyValue { value }
}

/// A string attribute.
fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// Nanoseconds since the epoch (0, OTLP's "unknown", before it).
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_an_info_log_record_with_its_json_as_body() {
        let r = pb::AuditRecord {
            creation_date: 1_764_260_957_123,
            summary: "Space exported".to_owned(),
            category: "Spaces".to_owned(),
            remote_address: "10.0.0.7".to_owned(),
            author: Some(pb::AuditAuthor {
                display_name: "Ada".to_owned(),
                user_key: Some("key-1".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let request = export_request(std::slice::from_ref(&r), now);
        let scope = &request.resource_logs[0].scope_logs[0];
        assert_eq!(scope.scope.as_ref().map(|s| s.name.as_str()), Some(SCOPE));
        let log = &scope.log_records[0];
        assert_eq!(log.time_unix_nano, 1_764_260_957_123_000_000);
        assert_eq!(log.observed_time_unix_nano, 1_800_000_000_000_000_000);
        assert_eq!(
            (log.severity_number, log.severity_text.as_str()),
            (9, "INFO")
        );
        let attrs: Vec<(&str, &AnyValue)> = log
            .attributes
            .iter()
            .filter_map(|kv| Some((kv.key.as_str(), kv.value.as_ref()?)))
            .collect();
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.value.clone())
        };
        let s = |v: &str| Some(Some(Value::StringValue(v.to_owned())));
        assert_eq!(get("event.action"), s("Space exported"));
        assert_eq!(get("user.id"), s("key-1"), "userKey without an accountId");
        assert_eq!(get("user.full_name"), s("Ada"));
        assert_eq!(get("source.ip"), s("10.0.0.7"));
        assert_eq!(get("confluence.audit.category"), s("Spaces"));
        assert_eq!(log.body, Some(any_value(&r.to_json())));
    }

    #[test]
    fn json_maps_onto_otlp_values() {
        let v: Json =
            serde_json::json!({"a": [1, 2.5, null, true], "b": {"c": "d"}, "e": u64::MAX});
        let Some(Value::KvlistValue(kv)) = any_value(&v).value else {
            panic!("an object is a kvlist")
        };
        let keys: Vec<&str> = kv.values.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "e"]);
        let Some(Value::ArrayValue(a)) = kv.values[0].value.clone().and_then(|v| v.value) else {
            panic!("an array is an array")
        };
        assert_eq!(a.values[0].value, Some(Value::IntValue(1)));
        assert_eq!(a.values[1].value, Some(Value::DoubleValue(2.5)));
        assert_eq!(a.values[2].value, None);
        assert_eq!(a.values[3].value, Some(Value::BoolValue(true)));
        assert!(matches!(
            kv.values[2].value.as_ref().and_then(|v| v.value.clone()),
            Some(Value::DoubleValue(_))
        ));
    }

    #[test]
    fn only_unanswered_calls_and_otlps_transient_codes_are_retried() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
        ] {
            assert!(retryable(&tonic::Status::new(code, "x")), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::Unimplemented,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Unknown,
            Code::Internal,
        ] {
            assert!(!retryable(&tonic::Status::new(code, "x")), "{code:?}");
        }
        let cut = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        assert!(retryable(&cut), "no answer from the receiver: {cut:?}");
    }
}
