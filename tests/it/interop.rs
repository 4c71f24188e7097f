//! Cross-language interop: a Python client generated from `proto/` calls the real
//! gateway binary in front of a Python stand-in for Confluence (tests/interop/*.py).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::common::{Finished, finish_within};

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

    let child = Command::new(&python)
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
    // The script's own watchdog stops its gateway first; the time limit is the backstop.
    let Finished {
        status,
        stdout,
        stderr,
    } = finish_within(child, TIMEOUT);
    let output = format!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    match status {
        None => panic!("{script} did not finish within {TIMEOUT:?}\n{output}"),
        Some(s) => assert!(s.success(), "{script} failed ({s})\n{output}"),
    }
    assert!(
        output.contains(&format!("\n{passes} passed, 0 failed\n")),
        "{script} did not report its {passes} check groups passing\n{output}"
    );
}
