"""Calls audit-gateway's three methods once each: GetSince (one page), StreamSince (cut by
max_records, then resumed from the last resume_token) and Follow (from a few minutes
back). Prints one summary line per method, and one more when the page held values the
gateway sent as JSON text (json_text_paths); exits non-zero on any failure. Streams and
followers that end with UNAVAILABLE (a gateway restarting) resume from their last token
or checkpoint, a few times.

Usage: python3 client.py [--addr HOST:PORT]   (default $AUDIT_GATEWAY_ADDR or 127.0.0.1:50051)
Needs: python3 -m pip install -r requirements.txt
"""

import argparse
import importlib
import importlib.resources
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
PAGE_SIZE = 25  # records per StreamSince message
MAX_RECORDS = 60  # records per StreamSince call, and the resumed call
FOLLOW_MAX = 20  # records to follow before Follow ends with OK
ATTEMPTS = 5  # calls of a stream or follower ended by UNAVAILABLE, the first included


def load_stubs(out):
    """Generates the stubs from proto/ into `out`; returns (audit_pb2, audit_pb2_grpc)."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    if protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out}",
                    f"--grpc_python_out={out}", "confluence/audit/v1/audit.proto"]) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, str(out))
    return (importlib.import_module("confluence.audit.v1.audit_pb2"),
            importlib.import_module("confluence.audit.v1.audit_pb2_grpc"))


def resuming(call):
    """Yields the messages of `call()`, calling it again (it reads the caller's last token or
    checkpoint) when the stream ends with UNAVAILABLE, up to ATTEMPTS calls in all."""
    for attempt in range(ATTEMPTS):
        try:
            yield from call()
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def stream(pb, stub, seen, token=""):
    """StreamSince over the last hour (after `token` when set) until MAX_RECORDS records;
    adds each record's identity to `seen`, failing on a repeat. Returns (records, last
    resume_token)."""
    count = 0

    def call():  # from the last token received, for what is still wanted
        request = pb.StreamSinceRequest(number=1, units=pb.TIME_UNIT_HOURS, page_size=PAGE_SIZE,
                                        max_records=MAX_RECORDS - count, resume_token=token)
        return stub.StreamSince(request, timeout=30)

    for message in resuming(call):
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


def unknown_fields(record):
    """A record's unknown_fields as a dict, with each value the gateway sent as JSON text
    (too deep for protobuf, listed in json_text_paths as JSON Pointers) parsed back."""
    fields = json_format.MessageToDict(record.unknown_fields)
    for path in record.json_text_paths:
        keys = [k.replace("~1", "/").replace("~0", "~") for k in path.split("/")[1:]]
        if keys[0] not in fields:
            continue  # in a typed field, such as /author/operations/...
        parent = fields
        for key in keys[:-1]:
            parent = parent[int(key) if isinstance(parent, list) else key]
        last = int(keys[-1]) if isinstance(parent, list) else keys[-1]
        parent[last] = json.loads(parent[last])
    return fields


def deepest(value):
    """(levels, innermost value) of the deepest path through JSON `value`."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return 0, value
    levels, innermost = max(map(deepest, value), key=lambda d: d[0], default=(0, None))
    return levels + 1, innermost


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
        deep = [r for r in page.results if r.json_text_paths]
        if deep:
            fields = unknown_fields(deep[0])
            key = max(fields, key=lambda k: deepest(fields[k])[0], default=None)
            levels, innermost = deepest(fields.get(key))
            print(f"JSON text restored in {len(deep)} records; the first's deepest unknown "
                  f"field: {key}, {levels} levels, innermost {json.dumps(innermost)}")

        # Cut at MAX_RECORDS, then resumed from the last token with the same filters.
        seen = set()
        first, token = stream(pb, stub, seen)
        resumed, _ = stream(pb, stub, seen, token)
        print(f"StreamSince: {first} records, resumed: {resumed} more, no repeats")

        # From five minutes back, polling every second; ends with OK after FOLLOW_MAX records.
        # Resumed from the last checkpoint (which a shipper would store) on UNAVAILABLE.
        since = int(time.time()) - 300
        dates, checkpoint = [], ""

        def follow():
            request = pb.FollowRequest(max_records=FOLLOW_MAX - len(dates))
            if checkpoint:
                request.checkpoint = checkpoint
            else:
                request.since.FromSeconds(since)
            request.poll_interval.FromSeconds(1)
            return stub.Follow(request, timeout=30)

        for message in resuming(follow):
            dates += [r.creation_date for r in message.records]
            checkpoint = message.checkpoint
        if len(dates) != FOLLOW_MAX or dates != sorted(dates):
            raise AssertionError(f"Follow: {len(dates)} records, want {FOLLOW_MAX} oldest first")
        print(f"Follow: {len(dates)} records, oldest first")


if __name__ == "__main__":
    try:
        main()
    except (grpc.RpcError, AssertionError) as e:
        sys.exit(f"error: {e}")
