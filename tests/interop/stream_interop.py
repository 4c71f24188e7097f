"""Cross-language interop check of audit-gateway's `StreamSince` over a live, flaky log.

An independent client (Python stubs generated from proto/) streams from the gateway
binary, which sits in front of an independent Confluence stand-in (http.server) serving
an in-memory, newest-first audit log of synthetic records ("event #<seq>", creationDate
rising with seq). The stand-in caps every page at CAP records (reported in `limit`),
answers FAULT_RATE of requests (seeded) with 503 and Atlassian's JSON error body or 429
with `Retry-After: 0`, and adds INSERTS new records at the head before answering each
request, so every offset shifts while the gateway pages (several pages at once).

Checks that a stream delivers exactly the records present at its first page, each once,
newest first; that a stream cut by max_records and resumed from its last token (after
more new events) delivers the rest with nothing repeated or lost; and that a token for
other filters, or a damaged one, is INVALID_ARGUMENT without reaching Confluence.

Usage: python3 tests/interop/stream_interop.py PATH-OF-audit-gateway
Needs: python3 -m pip install -r tests/interop/requirements.txt
Prints one line per check group and ends with `N passed, M failed` (exit 0 when M is 0).
"""

import json
import random
import re
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

from common import (Checks, expect_invalid_argument, generate_stubs, start_gateway,
                    start_watchdog, stop_gateway)

RECORDS = 2000  # in the log at the start: seqs 0..RECORDS-1
CAP = 37  # the stand-in's largest page
INSERTS = 7  # new records at the head before each request
FAULT_RATE = 0.2
SEED = 20240607
PAGE_SIZE = 50  # asked per page by the client; the gateway asks one more (the overlap)
CUT = 120  # max_records of the stream that is cut and resumed
GAP = 3 * CAP  # extra events between the cut and the resume: more than a page
BASE_MS = 1_700_000_000_000
ENDPOINT = "/wiki/rest/api/audit/since"
BEARER = "interop"
SUMMARY = re.compile(r"event #(\d+)")
WATCHDOG_SECONDS = 90  # then give up, still stopping the gateway (the Rust test allows 120)
UNITS = {"NANOS", "MICROS", "MILLIS", "SECONDS", "MINUTES", "HOURS", "HALF_DAYS", "DAYS",
         "WEEKS", "MONTHS", "YEARS", "DECADES", "CENTURIES"}
CATEGORIES = ["Permissions", "Users and groups", "Spaces", "Security", "Apps"]


def record(seq):
    """The synthetic record `seq`, in Atlassian's JSON shape; unique per seq."""
    user = seq % 13
    return {
        "author": {
            "type": "user", "displayName": f"User {user}", "operations": None,
            "username": f"user{user}", "userKey": f"key-{user}",
            "accountId": f"5b10ac8d82e05b22cc7d{user:04x}", "accountType": "atlassian",
            "isExternalCollaborator": False, "isGuest": False, "publicName": f"User {user}",
        },
        "remoteAddress": f"10.{seq >> 16 & 255}.{seq >> 8 & 255}.{seq & 255}",
        "creationDate": BASE_MS + seq * 1000,
        "summary": f"event #{seq}",
        "description": f"synthetic audit event {seq}",
        "category": CATEGORIES[seq % len(CATEGORIES)],
        "sysAdmin": seq % 3 == 0,
        "superAdmin": False,
        "affectedObject": {"name": f"Space {seq % 7}", "objectType": "Space"},
        "changedValues": [{"name": "Permission", "oldValue": "", "newValue": f"v{seq}"}],
        "associatedObjects": [{"name": f"Page {seq}", "objectType": "Page"}],
    }


def error_body(status, message):
    return json.dumps({"statusCode": status, "message": message, "data": {
        "authorized": True, "valid": True, "errors": [], "successful": False}}).encode()


class LiveLog:
    """The audit log, newest first: seqs count-1 (offset 0) down to 0. Thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = RECORDS
        self.rng = random.Random(SEED)
        self.served = []  # one dict per audit request, in the order they were served
        self.problems = []  # requests Confluence would have refused
        self.in_flight = self.most_in_flight = 0

    def begin(self):
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def end(self):
        with self.lock:
            self.in_flight -= 1

    def grow(self, n):
        with self.lock:
            self.count += n

    def answer(self, query):
        """(status, headers, body) for one well-formed audit request."""
        start, asked = int(query["start"]), int(query["limit"])
        with self.lock:
            self.count += INSERTS
            head = self.count - 1
            entry = {"start": start, "asked": asked, "head": head}
            self.served.append(entry)
            if self.rng.random() < FAULT_RATE:
                entry["status"] = 503 if self.rng.random() < 0.5 else 429
            else:
                entry["status"] = 200
        if entry["status"] == 503:
            return 503, {}, error_body(503, "Service Unavailable")
        if entry["status"] == 429:
            return 429, {"Retry-After": "0", "X-RateLimit-Remaining": "0"}, \
                error_body(429, "Rate limit exceeded")
        limit = min(asked, CAP)
        top = head - start  # the seq at offset `start` in this snapshot
        seqs = list(range(top, max(top - limit, -1), -1))
        entry["seqs"] = seqs
        base = "http://127.0.0.1/wiki"
        body = json.dumps({
            "results": [record(s) for s in seqs], "start": start, "limit": limit,
            "size": len(seqs),
            "_links": {"base": base, "context": "/wiki",
                       "self": f"{base}/rest/api/audit/since"},
        }).encode()
        return 200, {}, body


def well_formed(query):
    """The query names what Confluence reads: number and units (every record here is in
    the window), start and limit, at most a searchString."""
    if not set(query) <= {"number", "units", "searchString", "start", "limit"}:
        return False
    try:
        numbers = [int(query[k]) for k in ("number", "start", "limit")]
    except (KeyError, ValueError):
        return False
    return min(numbers) >= 0 and query.get("units", "") in UNITS


class StandIn(BaseHTTPRequestHandler):
    """Confluence's `GET /wiki/rest/api/audit/since` over `server.log`, bearer auth."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Confluence's front end
    disable_nagle_algorithm = True  # headers and body are separate writes

    def do_GET(self):
        self.server.log.begin()
        try:
            self.get(self.server.log)
        finally:
            self.server.log.end()

    def get(self, log):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if self.headers.get("Authorization") != f"Bearer {BEARER}":
            log.problems.append(("authorization", self.headers.get("Authorization")))
            return self.reply(401, {}, b"")
        if url.path != ENDPOINT:
            log.problems.append(("path", self.path))
            return self.reply(404, {}, b"")
        if not well_formed(query):
            log.problems.append(("query", self.path))
            return self.reply(400, {}, error_body(400, "bad query"))
        self.reply(*log.answer(query))

    def reply(self, status, headers, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def seqs_of(messages):
    """The seqs of the streamed records, checking each record is the one sent."""
    seqs = []
    for i, m in enumerate(messages):
        assert m.records, f"message {i} has no records"
        assert m.resume_token, f"message {i} has no resume_token"
        for r in m.records:
            match = SUMMARY.fullmatch(r.summary)
            assert match, f"message {i}: unexpected summary {r.summary!r}"
            seq = int(match.group(1))
            want = record(seq)
            got = (r.creation_date, r.remote_address, r.changed_values[0].new_value,
                   r.associated_objects[0].name, r.author.account_id)
            assert got == (want["creationDate"], want["remoteAddress"], f"v{seq}",
                           f"Page {seq}", want["author"]["accountId"]), (seq, got)
            seqs.append(seq)
    return seqs


def expect_run(seqs, top, bottom, what):
    """`seqs` is exactly top, top-1, ..., bottom; else says what is wrong."""
    want = list(range(top, bottom - 1, -1))
    if seqs == want:
        return
    dupes = len(seqs) - len(set(seqs))
    missing = sorted(set(want) - set(seqs), reverse=True)
    extra = sorted(set(seqs) - set(want), reverse=True)
    at = next((i for i, (a, b) in enumerate(zip(seqs, want)) if a != b), min(len(seqs), len(want)))
    raise AssertionError(
        f"{what}: got {len(seqs)} records, want {len(want)} ({top} down to {bottom}); "
        f"{dupes} repeated, {len(missing)} missing {missing[:10]}, {len(extra)} foreign "
        f"{extra[:10]}; first difference at index {at}: got {seqs[at:at + 5]}, "
        f"want {want[at:at + 5]}")


def first_page_head(log, since):
    """The head when the (one) first page of a stream was served, from request `since` on."""
    firsts = [e for e in log.served[since:] if e["start"] == 0 and e["status"] == 200]
    assert len(firsts) == 1, f"{len(firsts)} pages at offset 0 served: {firsts}"
    return firsts[0]["head"]


def settle(log, quiet=0.3, most=10.0):
    """Waits until the stand-in has had no request for `quiet` s (look-ahead loads end)."""
    deadline = time.monotonic() + most
    seen = len(log.served)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        if len(log.served) == seen:
            return seen
        seen = len(log.served)
    raise AssertionError(f"Confluence still asked after {most} s")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    start_watchdog("stream_interop.py", WATCHDOG_SECONDS)
    checks = Checks()
    group = checks.group

    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = generate_stubs(tmp)
    log = LiveLog()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    upstream.log = log
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    gateway, addr, gateway_log = start_gateway(binary, [
        "--confluence-url", f"http://127.0.0.1:{upstream.server_address[1]}/wiki",
        "--confluence-bearer-token", BEARER, "--upstream-retries", "10",
        "--upstream-backoff", "5ms", "--upstream-max-backoff", "50ms"])
    streamed = messages = 0
    started = time.monotonic()
    try:
        with grpc.insecure_channel(addr) as channel:
            stub = pb_grpc.AuditServiceStub(channel)

            def stream(**fields):
                nonlocal streamed, messages
                got = list(stub.StreamSince(pb.StreamSinceRequest(**fields), timeout=60))
                messages += len(got)
                streamed += sum(len(m.records) for m in got)
                return got

            with group(f"a whole window streams every record once, in order, through pages "
                       f"capped at {CAP}, {FAULT_RATE:.0%} faults and {INSERTS} new events "
                       f"per request"):
                since = len(log.served)
                seqs = seqs_of(stream(page_size=PAGE_SIZE))
                head = first_page_head(log, since)
                expect_run(seqs, head, 0, "the stream")

            with group(f"a stream cut at max_records={CUT} and resumed from its last token, "
                       f"after {GAP} more events, delivers the rest with nothing repeated "
                       f"or lost"):
                since = len(log.served)
                cut = stream(number=2, page_size=PAGE_SIZE, max_records=CUT)
                head = first_page_head(log, since)
                first = seqs_of(cut)
                expect_run(first, head, head - CUT + 1, "the cut stream")
                log.grow(GAP)
                rest = seqs_of(stream(number=2, page_size=PAGE_SIZE,
                                      resume_token=cut[-1].resume_token))
                expect_run(rest, head - CUT, 0, "the resumed stream")
                expect_run(first + rest, head, 0, "both together")
                token = cut[-1].resume_token

            with group("a resume token with other filters is INVALID_ARGUMENT, and Confluence "
                       "is not asked"):
                quiet = settle(log)
                for other in [{"number": 2, "search_string": "x"}, {"number": 3},
                              {"number": 2, "units": pb.TIME_UNIT_DAYS}]:
                    expect_invalid_argument(lambda: stream(
                        page_size=PAGE_SIZE, resume_token=token, **other), "resume_token")
                assert len(log.served) == quiet, f"reached Confluence: {log.served[quiet:]}"

            with group("a damaged resume token is INVALID_ARGUMENT, and Confluence is not "
                       "asked"):
                quiet = settle(log)
                mid = len(token) // 2
                flipped = token[:mid] + ("B" if token[mid] == "A" else "A") + token[mid + 1:]
                for bad in [flipped, token[:-3], token + "AAAA", "not a token!"]:
                    expect_invalid_argument(lambda: stream(
                        number=2, page_size=PAGE_SIZE, resume_token=bad), "resume_token")
                assert len(log.served) == quiet, f"reached Confluence: {log.served[quiet:]}"

            with group(f"Confluence was asked well-formed requests, page_size plus the overlap "
                       f"of 8 (never over 1000), and its cap of {CAP} held"):
                assert not log.problems, log.problems[:10]
                assert log.served, "Confluence was never asked"
                asked = {e["asked"] for e in log.served}
                assert asked == {min(PAGE_SIZE + 8, 1000)}, f"limits asked: {asked}"
                assert all(len(e.get("seqs", ())) <= CAP for e in log.served)
                assert any(e["status"] != 200 for e in log.served), "no fault was injected"
    finally:
        code = stop_gateway(gateway)
        upstream.shutdown()
    with group("the gateway exits 0 on SIGTERM"):
        assert code == 0, f"exit status {code}"
    status = [e["status"] for e in log.served]
    print(f"figures: {streamed} records in {messages} messages in "
          f"{time.monotonic() - started:.1f} s; {len(status)} upstream requests: "
          f"{status.count(200)} pages, {status.count(503)} × 503, {status.count(429)} × 429, "
          f"up to {log.most_in_flight} at once; "
          f"the log grew from {RECORDS} to {log.count} records")
    checks.finish(gateway_log)


if __name__ == "__main__":
    main()
