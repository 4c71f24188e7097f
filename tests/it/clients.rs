//! The client examples of examples/ (Python, Node.js, Go) against a gateway in front of
//! the simulator: each must exit 0 with its three summary lines, and against records
//! nested 60 JSON levels deep (`SimulatorConfig::nested_depth`) with a fourth saying what
//! it restored. A missing toolchain fails the test (scripts/test installs them all).

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use confluence_sim::SimulatorConfig;

use crate::common::{Finished, finish_within, sim_and_gateway};

/// What every example prints on success, against the default simulator (5000 records,
/// 5 s apart, the newest dated at start): a page of 100 from the last hour, 60 streamed
/// and 60 more after the resume, 20 followed from five minutes back.
const EXPECTED: &str = "GetSince: 100 records\n\
                        StreamSince: 60 records, resumed: 60 more, no repeats\n\
                        Follow: 20 records, oldest first\n";

/// JSON levels of the simulator's `nested` value in the nesting runs: 150 levels of
/// message nesting as plain `google.protobuf.Value`s, more than Python's protobuf (upb),
/// like prost, decodes.
const NESTED_DEPTH: usize = 60;

/// What every example prints when each record holds a value [`NESTED_DEPTH`] levels deep:
/// the summary of [`EXPECTED`] with, after GetSince, the deepest unknown field of the
/// newest record (5000 records: number 4999) as restored from JSON text.
fn expected_nested() -> String {
    let (get, rest) = EXPECTED.split_once('\n').expect("lines");
    format!(
        "{get}\nJSON text restored in 100 records; the first's deepest unknown field: \
         nested, {NESTED_DEPTH} levels, innermost \"bottom #4999\"\n{rest}"
    )
}

/// Longest an example may run (its calls take about a second).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest the Go example may take to build (a first build compiles grpc-go).
const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn python_example_gets_streams_resumes_and_follows() {
    // scripts/test prepares this virtualenv (tests/interop/requirements.txt holds
    // examples/python's packages); without it, the system's python3.
    let venv = root().join("target/interop-venv/bin/python3");
    let python: OsString = if venv.exists() {
        venv.into()
    } else {
        "python3".into()
    };
    let deps = run(
        Command::new(&python).args(["-c", "import grpc, grpc_tools"]),
        RUN_TIMEOUT,
    );
    assert!(
        deps.success,
        "examples/python needs grpcio and grpcio-tools: run `scripts/test` once, which \
         installs them into target/interop-venv\n{}",
        deps.text
    );
    for nested in [None, Some(NESTED_DEPTH)] {
        let mut command = Command::new(&python);
        command
            .arg(root().join("examples/python/client.py"))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        expect_summary("python", command, nested).await;
    }
}

#[tokio::test]
async fn node_example_gets_streams_resumes_and_follows() {
    assert!(
        root()
            .join("examples/node/node_modules/@grpc/grpc-js")
            .is_dir(),
        "examples/node has no node_modules: run `scripts/test` once (npm ci there)"
    );
    for nested in [None, Some(NESTED_DEPTH)] {
        let mut command = Command::new("node");
        command.arg(root().join("examples/node/client.js"));
        expect_summary("node", command, nested).await;
    }
}

#[tokio::test]
async fn go_example_gets_streams_resumes_and_follows() {
    let binary = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("auditclient-go");
    let build = tokio::task::spawn_blocking({
        let binary = binary.clone();
        move || {
            run(
                Command::new(root().join("examples/go/build.sh")).arg(&binary),
                BUILD_TIMEOUT,
            )
        }
    })
    .await
    .expect("build thread");
    assert!(
        build.success,
        "examples/go/build.sh failed (scripts/test installs Go and grpc-go from Debian's \
         packages)\n{}",
        build.text
    );
    for nested in [None, Some(NESTED_DEPTH)] {
        expect_summary("go", Command::new(&binary), nested).await;
    }
}

/// The committed Go stubs (examples/go/auditv1) are what examples/go/generate.sh makes
/// from proto/ now.
#[test]
fn go_example_stubs_match_the_proto() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-stubs");
    let _ = fs::remove_dir_all(&out);
    let generate = run(
        Command::new(root().join("examples/go/generate.sh")).arg(&out),
        RUN_TIMEOUT,
    );
    assert!(
        generate.success,
        "examples/go/generate.sh failed (scripts/test installs protoc, protoc-gen-go and \
         protoc-gen-go-grpc)\n{}",
        generate.text
    );
    for file in ["audit.pb.go", "audit_grpc.pb.go"] {
        let fresh = fs::read_to_string(out.join("auditv1").join(file)).expect("generated");
        let committed =
            fs::read_to_string(root().join("examples/go/auditv1").join(file)).expect("committed");
        assert!(
            fresh == committed,
            "examples/go/auditv1/{file} is stale: run examples/go/generate.sh"
        );
    }
}

/// Starts a simulator (its records `nested_depth` deep, when set) and a gateway, runs
/// `command` with the gateway's address in `AUDIT_GATEWAY_ADDR`, and expects exit 0 and
/// exactly [`EXPECTED`] (or [`expected_nested`]) on stdout.
async fn expect_summary(language: &str, mut command: Command, nested_depth: Option<usize>) {
    let config = SimulatorConfig {
        nested_depth,
        ..SimulatorConfig::default()
    };
    let expected = match nested_depth {
        None => EXPECTED.to_owned(),
        Some(_) => expected_nested(),
    };
    let (_sim, gw) = sim_and_gateway(config, |_| {}).await;
    command.env("AUDIT_GATEWAY_ADDR", gw.addr.to_string());
    let outcome = tokio::task::spawn_blocking(move || run(&mut command, RUN_TIMEOUT))
        .await
        .expect("client thread");
    assert!(
        outcome.success,
        "the {language} example failed (nested_depth {nested_depth:?})\n{}",
        outcome.text
    );
    assert_eq!(
        outcome.stdout, expected,
        "the {language} example's summary (nested_depth {nested_depth:?})\n{}",
        outcome.text
    );
}

/// The repository root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// How a child process ended.
struct Outcome {
    /// Exited 0 within its time.
    success: bool,
    /// Its standard output.
    stdout: String,
    /// Status, standard output and standard error, for failure messages.
    text: String,
}

/// Runs `command` to its end, killing it after `timeout`.
fn run(command: &mut Command, timeout: Duration) -> Outcome {
    let child = match command
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Outcome {
                success: false,
                stdout: String::new(),
                text: format!("{:?} did not start: {e}", command.get_program()),
            };
        }
    };
    let Finished {
        status,
        stdout,
        stderr,
    } = finish_within(child, timeout);
    let text = format!(
        "--- status: {} ---\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        status.map_or(format!("killed after {timeout:?}"), |s| s.to_string())
    );
    Outcome {
        success: status.is_some_and(|s| s.success()),
        stdout,
        text,
    }
}
