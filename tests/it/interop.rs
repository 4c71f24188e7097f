//! Cross-language interop: a Python client generated from `proto/` calls the real
//! gateway binary in front of a Python stand-in for Confluence (tests/interop/*.py).

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Longest a Python program may run (stub generation, gateway start, calls, shutdown).
const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn python_client_gets_atlassians_sample_field_for_field() {
    run_python("interop.py", 5);
}

/// Six groups against a live, flaky log, then two against the adversarial stand-in of
/// tests/interop/adversary.py (ties reshuffled, retention, a dishonest `limit`, 400 over
/// 1000, cut bodies).
#[test]
fn python_client_streams_a_live_flaky_log_exactly_once_and_resumes() {
    run_python("stream_interop.py", 8);
}

/// Runs `tests/interop/<script>` against the gateway binary and expects it to report
/// `passes` check groups passing and none failing.
fn run_python(script: &str, passes: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // scripts/test prepares this virtualenv; without it, the system's python3.
    let venv = root.join("target/interop-venv/bin/python3");
    let python = if venv.exists() {
        venv.into_os_string()
    } else {
        "python3".into()
    };
    let deps = Command::new(&python)
        .args([
            "-c",
            "import grpc, grpc_tools, grpc_status, google.rpc.error_details_pb2",
        ])
        .output();
    if !deps.as_ref().is_ok_and(|o| o.status.success()) {
        panic!(
            "the Python interop client needs its packages: run `scripts/test` once, which \
             installs them into target/interop-venv ({})",
            match &deps {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => format!("python3: {e}"),
            }
        );
    }

    let mut child = Command::new(&python)
        .arg(root.join("tests/interop").join(script))
        .arg(env!("CARGO_BIN_EXE_audit-gateway"))
        .current_dir(root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped")));

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait on python3") {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            // The script's own watchdog stops its gateway first; this is the backstop.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        stdout.join().expect("stdout reader"),
        stderr.join().expect("stderr reader")
    );
    match status {
        None => panic!("{script} did not finish within {TIMEOUT:?}\n{output}"),
        Some(s) => assert!(s.success(), "{script} failed ({s})\n{output}"),
    }
    assert!(
        output.contains(&format!("\n{passes} passed, 0 failed\n")),
        "{script} did not report its {passes} check groups passing\n{output}"
    );
}
