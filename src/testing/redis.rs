//! `redis-server` processes for the tests and benches of the shared tier, and RESP
//! commands to look inside them. Needs Debian's `redis-server` (scripts/test installs it).

use std::{
    ffi::OsString,
    net::TcpListener as StdListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// A loopback port nothing listens on now (the process it is given to binds it next).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// A free loopback port for each of `n` listeners, all held at once so none repeats.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<StdListener> = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// A `redis-server` on a loopback port, without persistence; killed on drop.
pub struct RedisServer {
    port: u16,
    /// Arguments beyond port, address and persistence (cluster mode, a directory).
    extra: Vec<OsString>,
    child: Option<Child>,
}

impl RedisServer {
    /// A server on a free port, answering PING.
    pub async fn start() -> Self {
        Self::start_on(free_port(), Vec::new()).await
    }

    /// A server on `port` with `extra` arguments, answering PING.
    pub async fn start_on(port: u16, extra: Vec<OsString>) -> Self {
        let mut server = Self {
            port,
            extra,
            child: None,
        };
        server.launch().await;
        server
    }

    /// Starts the process (again, after [`RedisServer::kill`]) and waits up to 5 s for
    /// it to answer PING.
    pub async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): install it (Debian: apt-get install \
                     redis-server); scripts/test does"
                )
            });
        self.child = Some(child);
        for _ in 0..500 {
            if self.command(&["PING"]).await == Some(Reply::Text("PONG".into())) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, database 0, for `--redis-url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command; `None` if the server cannot be reached.
    pub async fn command(&self, args: &[&str]) -> Option<Reply> {
        command(self.port, args).await
    }

    /// Every key (KEYS: fine for a test's few); empty if the server is down.
    pub async fn keys(&self) -> Vec<String> {
        match self.command(&["KEYS", "*"]).await {
            Some(Reply::Array(keys)) => keys,
            _ => Vec::new(),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The parts of RESP replies tests read.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// A simple or bulk string.
    Text(String),
    /// An array of bulk strings.
    Array(Vec<String>),
    /// An integer.
    Integer(i64),
    /// Anything else (nil, an error), as its first line.
    Other(String),
}

/// One command over RESP to the server on `port`; `None` if it cannot be reached.
pub async fn command(port: u16, args: &[&str]) -> Option<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let rest = line.get(1..).unwrap_or_default().trim_end();
    match line.as_bytes().first()? {
        b'+' => Some(Reply::Text(rest.to_owned())),
        b':' => rest.parse().ok().map(Reply::Integer),
        b'$' if rest != "-1" => Some(Reply::Text(bulk(&mut r, rest).await?)),
        b'*' => {
            let n: usize = rest.parse().ok()?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let mut header = String::new();
                r.read_line(&mut header).await.ok()?;
                items.push(bulk(&mut r, header.get(1..)?.trim_end()).await?);
            }
            Some(Reply::Array(items))
        }
        _ => Some(Reply::Other(line.trim_end().to_owned())),
    }
}

/// A bulk string of `len` (as its header gave it) bytes.
async fn bulk(r: &mut BufReader<TcpStream>, len: &str) -> Option<String> {
    let len: usize = len.parse().ok()?;
    let mut buf = vec![0; len + 2];
    r.read_exact(&mut buf).await.ok()?;
    buf.truncate(len);
    String::from_utf8(buf).ok()
}
