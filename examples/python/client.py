"""Calls audit-gateway's three methods once each: GetSince (one page), StreamSince (cut by
max_records, then resumed from the last resume_token) and Follow (from a few minutes
back). Prints one summary line per method; exits non-zero on any failure.

Usage: python3 client.py [--addr HOST:PORT]   (default $AUDIT_GATEWAY_ADDR or 127.0.0.1:50051)
Needs: python3 -m pip install -r requirements.txt
"""

import argparse
import importlib
import importlib.resources
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
PAGE_SIZE = 25  # records per StreamSince message
MAX_RECORDS = 60  # records per StreamSince call, and the resumed call
FOLLOW_MAX = 20  # records to follow before Follow ends with OK


def load_stubs(out):
    """Generates the stubs from proto/ into `out`; returns (audit_pb2, audit_pb2_grpc)."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    if protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out}",
                    f"--grpc_python_out={out}", "confluence/audit/v1/audit.proto"]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, str(out))
    return (importlib.import_module("confluence.audit.v1.audit_pb2"),
            importlib.import_module("confluence.audit.v1.audit_pb2_grpc"))


def stream(pb, stub, seen, token=""):
    """One StreamSince call over the last hour (after `token` when set); adds each record's
    identity to `seen`, failing on a repeat. Returns (records, last resume_token)."""
    request = pb.StreamSinceRequest(number=1, units=pb.TIME_UNIT_HOURS, page_size=PAGE_SIZE,
                                    max_records=MAX_RECORDS, resume_token=token)
    count = 0
    for message in stub.StreamSince(request, timeout=30):
        for record in message.records:
            key = (record.creation_date, record.summary)
            if key in seen:
                raise AssertionError(f"StreamSince: record repeated: {key}")
            seen.add(key)
            count += 1
        token = message.resume_token
    if count != MAX_RECORDS:
        raise AssertionError(f"StreamSince: {count} records, want {MAX_RECORDS}")
    return count, token


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default=os.environ.get("AUDIT_GATEWAY_ADDR", "127.0.0.1:50051"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        pb, pb_grpc = load_stubs(out)
    # Plain-text HTTP/2; use grpc.secure_channel for a TLS gateway.
    with grpc.insecure_channel(args.addr) as channel:
        stub = pb_grpc.AuditServiceStub(channel)

        page = stub.GetSince(pb.GetSinceRequest(number=1, units=pb.TIME_UNIT_HOURS, limit=100),
                             timeout=30)
        print(f"GetSince: {len(page.results)} records")

        # Cut at MAX_RECORDS, then resumed from the last token with the same filters.
        seen = set()
        first, token = stream(pb, stub, seen)
        resumed, _ = stream(pb, stub, seen, token)
        print(f"StreamSince: {first} records, resumed: {resumed} more, no repeats")

        # From five minutes back, polling every second; ends with OK after FOLLOW_MAX records.
        request = pb.FollowRequest(max_records=FOLLOW_MAX)
        request.since.FromSeconds(int(time.time()) - 300)
        request.poll_interval.FromSeconds(1)
        dates = [r.creation_date for m in stub.Follow(request, timeout=30) for r in m.records]
        if len(dates) != FOLLOW_MAX or dates != sorted(dates):
            raise AssertionError(f"Follow: {len(dates)} records, want {FOLLOW_MAX} oldest first")
        print(f"Follow: {len(dates)} records, oldest first")


if __name__ == "__main__":
    try:
        main()
    except (grpc.RpcError, AssertionError) as e:
        sys.exit(f"error: {e}")
