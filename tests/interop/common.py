"""Shared by the Python interop checks (interop.py, stream_interop.py): Python stubs
generated from proto/, the gateway binary started on port 0 and stopped with SIGTERM,
a watchdog, and check groups that end in `N passed, M failed`."""

import contextlib
import importlib
import importlib.resources
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Watchdog(BaseException):
    """Raised by SIGALRM; not an Exception, so no check group swallows it."""


def start_watchdog(program, seconds):
    """Raises Watchdog in the main thread once `seconds` have passed."""

    def fire(*_):
        raise Watchdog(f"{program} did not finish within {seconds} s")

    signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)


def generate_stubs(out):
    """Compiles audit.proto into `out` and returns (audit_pb2, audit_pb2_grpc)."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{REPO / 'proto'}", f"-I{well_known}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        "confluence/audit/v1/audit.proto",
    ])
    if rc != 0:
        sys.exit(f"grpc_tools.protoc failed ({rc})")
    sys.path.insert(0, str(out))
    return (importlib.import_module("confluence.audit.v1.audit_pb2"),
            importlib.import_module("confluence.audit.v1.audit_pb2_grpc"))


def start_gateway(binary, args):
    """Starts `serve --listen 127.0.0.1:0 ARGS`; returns (process, "host:port", log lines)."""
    env = dict(os.environ, NO_COLOR="1", RUST_LOG="info", AUDIT_GATEWAY_LOG_FORMAT="text")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, text=True, encoding="utf-8", errors="replace")
    log, found = [], queue.Queue()

    def drain():  # keeps reading so the gateway never blocks on a full pipe
        for line in proc.stderr:
            log.append(line := ANSI.sub("", line.rstrip("\n")))
            if m := re.search(r"listening.*\baddr=(\S+)", line):
                found.put(m.group(1))
        found.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        addr = found.get(timeout=30)
    except queue.Empty:
        addr = None
    if addr is None:
        proc.kill()
        sys.exit("the gateway never logged its listening address:\n" + "\n".join(log))
    return proc, addr, log


def stop_gateway(proc):
    """SIGTERM, then waits; returns the exit status (or why there is none)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "still running 30 s after SIGTERM"


def bad_request_fields(error):
    """The fields named by the google.rpc.BadRequest details of a failed call."""
    trailers = dict(error.trailing_metadata() or ())
    assert "grpc-status-details-bin" in trailers, trailers
    status = rpc_status.from_call(error)  # also checks code and message agree
    violations = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations += [v.field for v in bad.field_violations]
    return violations


def expect_invalid_argument(call, field):
    """`call()` fails with INVALID_ARGUMENT and a BadRequest naming only `field`."""
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert field in e.details(), e.details()
        violations = bad_request_fields(e)
        assert violations == [field], violations
        return
    raise AssertionError(f"the call was accepted (expected INVALID_ARGUMENT on {field})")


class Checks:
    """Check groups: each prints `ok   NAME` or `FAIL NAME` and its traceback."""

    def __init__(self):
        self.results = []

    @contextlib.contextmanager
    def group(self, name):
        try:
            yield
            self.results.append(True)
            print(f"ok   {name}", flush=True)
        except Exception:
            self.results.append(False)
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)

    def finish(self, log):
        """Prints the gateway log when something failed, then `N passed, M failed`; exits."""
        failed = self.results.count(False)
        if failed:
            print("gateway log:\n  " + "\n  ".join(log))
        print(f"{self.results.count(True)} passed, {failed} failed")
        sys.exit(1 if failed else 0)
