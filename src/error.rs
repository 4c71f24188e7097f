//! The gateway's error type, free of any transport: `src/grpc/status.rs` maps it to
//! gRPC, and `Chain` prints it with its causes for logs.

use std::{error::Error, fmt, sync::Arc, time::Duration};

/// The cause of an error, shared so that a load joined by several callers can hand
/// each of them the same failure.
pub(crate) type Source = Arc<dyn Error + Send + Sync>;

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
    /// A 200 whose body ended early: shorter than its `Content-Length`, the connection
    /// reset mid-body, or the body stalled until the attempt timed out. A transport
    /// failure like a reset, not a verdict on Confluence's data.
    BodyCut,
    /// 504 or no answer in time.
    Timeout,
    /// Any other status.
    Other,
}

impl UpstreamFailure {
    /// The stable reason code, as `ErrorInfo` and metrics labels carry it.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::BadRequest => "UPSTREAM_BAD_REQUEST",
            Self::Unauthenticated => "UPSTREAM_UNAUTHENTICATED",
            Self::PermissionDenied => "UPSTREAM_PERMISSION_DENIED",
            Self::NotFound => "UPSTREAM_NOT_FOUND",
            Self::RateLimited => "UPSTREAM_RATE_LIMITED",
            Self::Unavailable => "UPSTREAM_UNAVAILABLE",
            Self::BodyCut => "UPSTREAM_BODY_CUT",
            Self::Timeout => "UPSTREAM_TIMEOUT",
            Self::Other => "UPSTREAM_ERROR",
        }
    }
}

/// A per-caller cap (`src/app/caps.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerCap {
    /// `--caller-max-streams`: this many streams and followers open at once.
    MaxStreams(usize),
    /// `--caller-miss-rate`: this many calls a second answered by Confluence.
    MissRate(u32),
}

/// Everything that can make a gateway call fail.
#[derive(Clone, Debug)]
pub enum GatewayError {
    /// A request field is invalid; the request never reached the upstream.
    InvalidArgument {
        /// The request field, as named in the proto.
        field: &'static str,
        /// What is wrong with it.
        description: String,
        /// A stable word for why, when the field is a token or checkpoint
        /// (`TokenError::code` in `src/audit/resume.rs`), sent as `ErrorInfo` metadata.
        cause: Option<&'static str>,
    },
    /// The caller sent no usable credential (with `--auth-passthrough`).
    MissingCredential(String),
    /// The caller presented no gateway token, or one `--caller-tokens-file` does not hold.
    UnknownCaller,
    /// Confluence answered with an error or could not be reached.
    Upstream {
        /// The class of failure.
        failure: UpstreamFailure,
        /// HTTP status, when there was an answer.
        http_status: Option<u16>,
        /// What went wrong, with Confluence's own `message` when it gave one.
        message: String,
        /// The wait Confluence asked for (`Retry-After`, at most a day), or the time left of
        /// a cool-down that refused the call (`src/upstream/cooldown.rs`).
        retry_after: Option<Duration>,
        /// The transport error beneath, when there was no answer.
        source: Option<Source>,
    },
    /// The caller's deadline passed before the upstream answered.
    DeadlineExceeded(String),
    /// Confluence answered 200 with a complete body that is not JSON or is not an
    /// `AuditRecordArray`; retried a few times (`src/upstream/retry.rs`) before it ends a
    /// call. A body cut short is [`UpstreamFailure::BodyCut`] instead.
    MalformedBody(String),
    /// Confluence's body exceeded the configured size cap.
    BodyTooLarge {
        /// The configured cap, in bytes.
        limit: usize,
    },
    /// The gateway already serves its most `StreamSince` calls (`--max-streams`); the call
    /// is refused at once rather than queued, so a caller can go elsewhere or retry.
    TooManyStreams {
        /// The configured cap.
        limit: usize,
    },
    /// A cap of the calling caller's own refused the call; other callers are not held.
    CallerCapped {
        /// Which cap.
        cap: CallerCap,
        /// When the call may succeed again.
        retry_after: Duration,
    },
    /// A stream's caller took nothing for `--stream-idle-timeout`; the stream ended.
    StreamIdle {
        /// The configured idle time-out.
        after: Duration,
    },
    /// A load nobody waited for any more was dropped before its request was sent.
    Abandoned,
    /// The gateway is shutting down: a long call ended after its last complete message,
    /// so the caller resumes elsewhere from its last token or checkpoint.
    ShuttingDown,
    /// Confluence breaks a rule the gateway relies on and retrying cannot help (it ignores
    /// the date range asked): the call ends rather than flood it with requests.
    UpstreamContract(String),
    /// A defect in the gateway itself.
    Internal(String),
}

impl GatewayError {
    /// Shorthand for an invalid request field.
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
            cause: None,
        }
    }

    /// A resume token or checkpoint in `field` that was refused, saying why.
    pub(crate) fn invalid_token(
        field: &'static str,
        why: &crate::audit::resume::TokenError,
    ) -> Self {
        Self::InvalidArgument {
            field,
            description: why.to_string(),
            cause: Some(why.code()),
        }
    }

    /// A stable machine-readable reason, used in `ErrorInfo` and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_REQUEST",
            Self::MissingCredential(_) => "MISSING_CREDENTIAL",
            Self::UnknownCaller => "CALLER_UNAUTHENTICATED",
            Self::Upstream { failure, .. } => failure.reason(),
            Self::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Self::MalformedBody(_) => "UPSTREAM_MALFORMED_BODY",
            Self::BodyTooLarge { .. } => "UPSTREAM_BODY_TOO_LARGE",
            Self::TooManyStreams { .. } => "TOO_MANY_STREAMS",
            Self::CallerCapped {
                cap: CallerCap::MaxStreams(_),
                ..
            } => "CALLER_MAX_STREAMS",
            Self::CallerCapped {
                cap: CallerCap::MissRate(_),
                ..
            } => "CALLER_MISS_RATE",
            Self::StreamIdle { .. } => "STREAM_IDLE",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::Abandoned => "ABANDONED",
            Self::UpstreamContract(_) => "UPSTREAM_BREAKS_CONTRACT",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// Whether another attempt may succeed (connection trouble, 429, 5xx, time-outs, a
    /// cut or broken 200 body: a proxy or a dropped connection, not Confluence's data, is
    /// the likely cause).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Upstream {
                failure: UpstreamFailure::RateLimited
                    | UpstreamFailure::Unavailable
                    | UpstreamFailure::BodyCut
                    | UpstreamFailure::Timeout,
                ..
            } | Self::MalformedBody(_)
        )
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArgument {
                field, description, ..
            } => write!(f, "{field}: {description}"),
            Self::UnknownCaller => f.write_str(
                "this gateway needs 'authorization: Bearer <token>' metadata with a caller token",
            ),
            Self::MissingCredential(m)
            | Self::DeadlineExceeded(m)
            | Self::MalformedBody(m)
            | Self::UpstreamContract(m)
            | Self::Internal(m) => f.write_str(m),
            Self::Upstream { message, .. } => f.write_str(message),
            Self::BodyTooLarge { limit } => {
                write!(f, "Confluence's answer exceeded the {limit}-byte body cap")
            }
            Self::TooManyStreams { limit } => {
                write!(
                    f,
                    "the gateway already serves its {limit} streams; retry later"
                )
            }
            Self::CallerCapped {
                cap: CallerCap::MaxStreams(n),
                ..
            } => write!(
                f,
                "this caller already holds its {n} streams and followers open \
                 (--caller-max-streams); end one or retry later"
            ),
            Self::CallerCapped {
                cap: CallerCap::MissRate(n),
                retry_after,
            } => write!(
                f,
                "this caller asked Confluence for more than {n} pages a second \
                 (--caller-miss-rate); retry in {:.1}s, or read what is cached",
                retry_after.as_secs_f64()
            ),
            Self::StreamIdle { after } => write!(
                f,
                "the stream was not read for {after:?} and ended; resume from the last token"
            ),
            Self::Abandoned => f.write_str("no caller waited for this page any more"),
            Self::ShuttingDown => f.write_str(
                "this gateway replica is shutting down; call again with the last token or \
                 checkpoint (another replica continues)",
            ),
        }
    }
}

impl Error for GatewayError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Upstream {
                source: Some(s), ..
            } => Some(s.as_ref()),
            _ => None,
        }
    }
}

/// Runs `work` until `deadline` (if any); past it, the answer is DEADLINE_EXCEEDED with
/// `why`. The one way the gateway holds work to a caller's deadline.
pub(crate) async fn within_deadline<T>(
    deadline: Option<std::time::Instant>,
    why: &'static str,
    work: impl Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), work)
            .await
            .unwrap_or_else(|_| Err(GatewayError::DeadlineExceeded(why.to_owned()))),
        None => work.await,
    }
}

/// Prints an error and each of its causes, `outer: inner: innermost`, for logs and for
/// the binary's start-up errors.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_print_every_cause() {
        let io = std::io::Error::other("connection reset by peer");
        let err = GatewayError::Upstream {
            failure: UpstreamFailure::Unavailable,
            http_status: None,
            message: "the connection to Confluence failed".into(),
            retry_after: None,
            source: Some(Arc::new(io)),
        };
        assert_eq!(
            Chain(&err).to_string(),
            "the connection to Confluence failed: connection reset by peer"
        );
        // The caller's message stays the gateway's own.
        assert_eq!(err.to_string(), "the connection to Confluence failed");
    }
}
