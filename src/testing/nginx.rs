//! `nginx` as a real L7 proxy in front of gateways. Needs Debian's `nginx`
//! (scripts/test installs it).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::net::TcpStream;

use super::{
    process::{TempDir, exit_within, terminate},
    redis::free_port,
};

/// `nginx` on PATH, else Debian's /usr/sbin/nginx (not on a non-root user's PATH).
fn program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// An nginx master with one worker, run from a temp dir that holds its configuration,
/// pid file, logs (`error.log` at level info) and temp paths; stopped on drop.
pub struct Nginx {
    port: u16,
    child: Child,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `http` inside its `http { }` block: given the free port to
    /// listen on and the temp dir, it returns the upstreams, servers and access log.
    /// Returns once nginx accepts connections on the port.
    pub async fn start(label: &str, http: impl FnOnce(u16, &Path) -> String) -> Self {
        let dir = TempDir::new(label);
        let port = free_port();
        let d = dir.path().display();
        let config = format!(
            "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{}
}}
",
            http(port, dir.path())
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let child = Command::new(program())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            // Where nginx logs before it has read the configuration (1.19.5 and later).
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nginx ({e}): scripts/test installs it on Debian")
            });
        let mut nginx = Self { port, child, dir };
        // It binds its port after reading the configuration: connectable means serving.
        for _ in 0..1000 {
            if let Some(status) = nginx.child.try_wait().expect("wait") {
                panic!("nginx exited ({status}):\n{}", nginx.file("error.log"));
            }
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "nginx did not listen on {port}:\n{}",
            nginx.file("error.log")
        );
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A file of its temp dir (a log), empty if there is none.
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its worker; a SIGKILLed master would leave the
        // worker holding the port.
        terminate(&self.child);
        if exit_within(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
