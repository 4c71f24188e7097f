//! A stub Confluence: a real HTTP/1.1 server on loopback that answers every request with
//! one canned answer and records what it was asked, for answers the simulator does not
//! give (Atlassian's sample body, a broken body, a status of one's choosing).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One canned answer of the stub upstream.
#[derive(Clone, Debug)]
pub struct Canned {
    /// HTTP status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Bytes,
}

impl Canned {
    /// A 200 JSON answer.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body: body.into(),
        }
    }
}

/// A minimal HTTP/1.1 upstream that answers every request with one canned answer and
/// records what it was asked (path and raw query).
pub struct StubUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
}

impl StubUpstream {
    /// Serves `answer` to every request.
    pub async fn start(answer: Canned) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("bound");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let traceparents = Arc::new(Mutex::new(Vec::new()));
        let (log, traces) = (seen.clone(), traceparents.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = answer.clone();
                let (log, traces) = (log.clone(), traces.clone());
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    log.lock().expect("lock").push(req.uri().to_string());
                    let traceparent = req
                        .headers()
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    traces.lock().expect("lock").push(traceparent);
                    let answer = answer.clone();
                    async move {
                        let mut resp = Response::builder().status(answer.status);
                        for (k, v) in &answer.headers {
                            resp = resp.header(*k, v);
                        }
                        Ok::<_, Infallible>(resp.body(Full::new(answer.body)).expect("response"))
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
            }
        });
        Self {
            addr,
            seen,
            traceparents,
        }
    }

    /// The base URL, Cloud-style.
    pub fn base_url(&self) -> String {
        format!("http://{}/wiki", self.addr)
    }

    /// Every request target received (path and query), in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }

    /// The `traceparent` header of every request received, in order.
    pub fn traceparents(&self) -> Vec<Option<String>> {
        self.traceparents.lock().expect("lock").clone()
    }
}
