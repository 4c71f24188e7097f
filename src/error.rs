//! The gateway's error type, free of any transport: `grpc::status` maps it to gRPC.

use std::{fmt, time::Duration};

/// Why an upstream call failed, in the terms the gateway's error table uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// 400: Confluence rejected the query.
    BadRequest,
    /// 401: the credential was refused.
    Unauthenticated,
    /// 403: the credential lacks the 'Confluence Administrator' permission (or a free plan).
    PermissionDenied,
    /// 404: no audit endpoint under the configured base URL.
    NotFound,
    /// 429: rate limited.
    RateLimited,
    /// 500/502/503, connection refused or reset.
    Unavailable,
    /// 504 or no answer in time.
    Timeout,
    /// Any other status.
    Other,
}

/// Everything that can make a gateway call fail.
#[derive(Clone, Debug, PartialEq)]
pub enum GatewayError {
    /// A request field is invalid; the request never reached the upstream.
    InvalidArgument {
        /// The request field, as named in the proto.
        field: &'static str,
        /// What is wrong with it.
        description: String,
    },
    /// The caller sent no usable credential (with `--auth-passthrough`).
    MissingCredential(String),
    /// Confluence answered with an error or could not be reached.
    Upstream {
        /// The class of failure.
        failure: UpstreamFailure,
        /// HTTP status, when there was an answer.
        http_status: Option<u16>,
        /// What went wrong, with Confluence's own `message` when it gave one.
        message: String,
        /// The wait Confluence asked for (`Retry-After`, clamped).
        retry_after: Option<Duration>,
    },
    /// The caller's deadline passed before the upstream answered.
    DeadlineExceeded(String),
    /// Confluence answered 200 with a body that is not an `AuditRecordArray`.
    MalformedBody(String),
    /// Confluence's body exceeded the configured size cap.
    BodyTooLarge {
        /// The configured cap, in bytes.
        limit: usize,
    },
    /// A defect in the gateway itself.
    Internal(String),
}

impl GatewayError {
    /// Shorthand for an invalid request field.
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }

    /// A stable machine-readable reason, used in `ErrorInfo` and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_REQUEST",
            Self::MissingCredential(_) => "MISSING_CREDENTIAL",
            Self::Upstream { failure, .. } => match failure {
                UpstreamFailure::BadRequest => "UPSTREAM_BAD_REQUEST",
                UpstreamFailure::Unauthenticated => "UPSTREAM_UNAUTHENTICATED",
                UpstreamFailure::PermissionDenied => "UPSTREAM_PERMISSION_DENIED",
                UpstreamFailure::NotFound => "UPSTREAM_NOT_FOUND",
                UpstreamFailure::RateLimited => "UPSTREAM_RATE_LIMITED",
                UpstreamFailure::Unavailable => "UPSTREAM_UNAVAILABLE",
                UpstreamFailure::Timeout => "UPSTREAM_TIMEOUT",
                UpstreamFailure::Other => "UPSTREAM_ERROR",
            },
            Self::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Self::MalformedBody(_) => "UPSTREAM_MALFORMED_BODY",
            Self::BodyTooLarge { .. } => "UPSTREAM_BODY_TOO_LARGE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// Whether a caller's deadline (rather than Confluence) ended the call.
    pub fn is_deadline_bound(&self) -> bool {
        matches!(self, Self::DeadlineExceeded(_))
    }

    /// Whether another attempt may succeed (connection trouble, 429, 5xx, time-outs).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Upstream {
                failure: UpstreamFailure::RateLimited
                    | UpstreamFailure::Unavailable
                    | UpstreamFailure::Timeout,
                ..
            }
        )
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArgument { field, description } => write!(f, "{field}: {description}"),
            Self::MissingCredential(m)
            | Self::DeadlineExceeded(m)
            | Self::MalformedBody(m)
            | Self::Internal(m) => f.write_str(m),
            Self::Upstream { message, .. } => f.write_str(message),
            Self::BodyTooLarge { limit } => {
                write!(f, "Confluence's answer exceeded the {limit}-byte body cap")
            }
        }
    }
}

impl std::error::Error for GatewayError {}
