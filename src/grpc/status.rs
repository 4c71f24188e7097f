//! The one place gateway errors become gRPC statuses (the error table in docs/errors.md),
//! with `ErrorInfo`, `RetryInfo` and `BadRequest` details, and are logged.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{CallerCap, Chain, GatewayError, UpstreamFailure};

/// `ErrorInfo.domain` of every status the gateway makes.
const ERROR_DOMAIN: &str = "audit-gateway";

/// The `RetryInfo` delay suggested when Confluence named none.
const DEFAULT_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Logs why `method` failed (with the error's whole chain) and gives the caller's status.
pub(crate) fn fail(method: &'static str, caller: Option<&str>, err: &GatewayError) -> Status {
    let status = to_status(err);
    tracing::info!(
        method,
        caller,
        code = ?status.code(),
        reason = err.reason(),
        error = %Chain(err),
        "call failed"
    );
    status
}

/// The gRPC code of an error.
fn code(err: &GatewayError) -> Code {
    match err {
        GatewayError::InvalidArgument { .. } => Code::InvalidArgument,
        GatewayError::MissingCredential(_) | GatewayError::UnknownCaller => Code::Unauthenticated,
        GatewayError::Upstream { failure, .. } => match failure {
            UpstreamFailure::BadRequest => Code::InvalidArgument,
            UpstreamFailure::Unauthenticated => Code::Unauthenticated,
            UpstreamFailure::PermissionDenied => Code::PermissionDenied,
            UpstreamFailure::NotFound => Code::NotFound,
            UpstreamFailure::RateLimited => Code::ResourceExhausted,
            // A cut body is a transport failure: the caller resumes as after a reset.
            UpstreamFailure::Unavailable | UpstreamFailure::BodyCut => Code::Unavailable,
            UpstreamFailure::Timeout => Code::DeadlineExceeded,
            UpstreamFailure::Other => Code::Unknown,
        },
        GatewayError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        GatewayError::MalformedBody(_) | GatewayError::BodyTooLarge { .. } => Code::Internal,
        GatewayError::TooManyStreams { .. } | GatewayError::CallerCapped { .. } => {
            Code::ResourceExhausted
        }
        // The gateway's own time limit on the caller, as a deadline is the caller's.
        GatewayError::StreamIdle { .. } => Code::DeadlineExceeded,
        // The code clients and meshes retry.
        GatewayError::ShuttingDown => Code::Unavailable,
        // Only a load nobody waits for ends so; should one reach a caller, it was cut.
        GatewayError::Abandoned => Code::Cancelled,
        // The system is not in a state the call can work in; no retry changes that.
        GatewayError::UpstreamContract(_) => Code::FailedPrecondition,
        GatewayError::Internal(_) => Code::Internal,
    }
}

/// The status sent to the caller for an error.
fn to_status(err: &GatewayError) -> Status {
    let mut details = ErrorDetails::new();
    let mut metadata = HashMap::new();
    match err {
        GatewayError::InvalidArgument {
            field,
            description,
            cause,
        } => {
            details.add_bad_request_violation(*field, description.clone());
            if let Some(cause) = cause {
                metadata.insert("cause".to_owned(), (*cause).to_owned());
            }
        }
        GatewayError::Upstream {
            http_status,
            retry_after,
            failure,
            ..
        } => {
            if let Some(s) = http_status {
                metadata.insert("http_status".to_owned(), s.to_string());
            }
            let retryable = matches!(
                failure,
                UpstreamFailure::RateLimited
                    | UpstreamFailure::Unavailable
                    | UpstreamFailure::BodyCut
            );
            if retryable {
                // Without a Retry-After, suggest a pause rather than an immediate retry.
                details.set_retry_info(Some(retry_after.unwrap_or(DEFAULT_RETRY_DELAY)));
            }
        }
        GatewayError::BodyTooLarge { limit } => {
            metadata.insert("max_body_bytes".to_owned(), limit.to_string());
        }
        GatewayError::TooManyStreams { limit } => {
            metadata.insert("max_streams".to_owned(), limit.to_string());
            // Streams last long; a pause, not an immediate retry, gives one time to end.
            details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
        }
        GatewayError::CallerCapped { cap, retry_after } => {
            let (name, limit) = match cap {
                CallerCap::MaxStreams(n) => ("caller-max-streams", n.to_string()),
                CallerCap::MissRate(n) => ("caller-miss-rate", n.to_string()),
            };
            metadata.insert("cap".to_owned(), name.to_owned());
            metadata.insert("limit".to_owned(), limit);
            details.set_retry_info(Some(*retry_after));
        }
        GatewayError::StreamIdle { after } => {
            metadata.insert("idle_timeout_ms".to_owned(), after.as_millis().to_string());
        }
        GatewayError::ShuttingDown => {
            details.set_retry_info(Some(Duration::ZERO));
        }
        _ => {}
    }
    details.set_error_info(err.reason(), ERROR_DOMAIN, metadata);
    Status::with_error_details(code(err), err.to_string(), details)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn upstream(status: u16, failure: UpstreamFailure) -> GatewayError {
        GatewayError::Upstream {
            failure,
            http_status: Some(status),
            message: format!("Confluence answered {status}"),
            retry_after: (status == 429).then(|| Duration::from_secs(2)),
            source: None,
        }
    }

    #[test]
    fn rate_limits_carry_retry_info_and_reason() {
        let s = to_status(&upstream(429, UpstreamFailure::RateLimited));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let d = s.get_error_details();
        assert_eq!(
            d.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(2))
        );
        let info = d.error_info().expect("error info");
        assert_eq!(info.reason, "UPSTREAM_RATE_LIMITED");
        assert_eq!(
            info.metadata.get("http_status").map(String::as_str),
            Some("429")
        );
    }

    #[test]
    fn refused_streams_are_resource_exhausted_with_retry_info() {
        let s = to_status(&GatewayError::TooManyStreams { limit: 8 });
        assert_eq!(s.code(), Code::ResourceExhausted);
        let d = s.get_error_details();
        assert_eq!(
            d.retry_info().and_then(|r| r.retry_delay),
            Some(DEFAULT_RETRY_DELAY)
        );
        let info = d.error_info().expect("error info");
        assert_eq!(info.reason, "TOO_MANY_STREAMS");
        assert_eq!(
            info.metadata.get("max_streams").map(String::as_str),
            Some("8")
        );
    }

    #[test]
    fn invalid_arguments_name_the_field() {
        let s = to_status(&GatewayError::invalid("limit", "too big"));
        assert_eq!(s.code(), Code::InvalidArgument);
        let d = s.get_error_details();
        let v = &d.bad_request().expect("bad request").field_violations[0];
        assert_eq!(
            (v.field.as_str(), v.description.as_str()),
            ("limit", "too big")
        );
    }

    #[test]
    fn refused_tokens_say_why_in_error_info() {
        use crate::audit::resume::TokenError;
        for (why, cause) in [
            (TokenError::OtherKey, "OTHER_KEY"),
            (TokenError::Corrupt, "DAMAGED"),
            (TokenError::OtherFilter, "OTHER_FILTER"),
        ] {
            let s = to_status(&GatewayError::invalid_token("checkpoint", &why));
            assert_eq!(s.code(), Code::InvalidArgument);
            let d = s.get_error_details();
            let v = &d.bad_request().expect("bad request").field_violations[0];
            assert_eq!(v.field, "checkpoint");
            let info = d.error_info().expect("error info");
            assert_eq!(info.reason, "INVALID_REQUEST");
            assert_eq!(info.metadata.get("cause").map(String::as_str), Some(cause));
        }
        let plain = to_status(&GatewayError::invalid("limit", "too big"));
        let details = plain.get_error_details();
        let info = details.error_info().expect("error info");
        assert!(!info.metadata.contains_key("cause"), "{info:?}");
    }

    #[test]
    fn cut_bodies_are_unavailable_and_broken_ones_internal() {
        let cut = GatewayError::Upstream {
            failure: UpstreamFailure::BodyCut,
            http_status: None,
            message: "Confluence's answer was cut after 100 of 5000 bytes".into(),
            retry_after: None,
            source: None,
        };
        let s = to_status(&cut);
        assert_eq!(s.code(), Code::Unavailable);
        let d = s.get_error_details();
        assert_eq!(
            d.error_info().map(|i| i.reason.as_str()),
            Some("UPSTREAM_BODY_CUT")
        );
        assert_eq!(
            d.retry_info().and_then(|r| r.retry_delay),
            Some(DEFAULT_RETRY_DELAY)
        );
        let s = to_status(&GatewayError::MalformedBody("not JSON".into()));
        assert_eq!(s.code(), Code::Internal);
        let d = s.get_error_details();
        assert_eq!(
            d.error_info().map(|i| i.reason.as_str()),
            Some("UPSTREAM_MALFORMED_BODY")
        );
        assert!(
            d.retry_info().is_none(),
            "a broken body is not worth a retry"
        );
    }
}
