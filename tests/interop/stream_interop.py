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

Then a second gateway is started in front of an adversarial stand-in (adversary.py: ties
listed in a fresh order by every request, the oldest records deleted as requests come,
pages capped while the body echoes the requested `limit` or leaves it out, `limit` over
1000 refused with 400, 10 % of 200 bodies cut short), and two more groups check that a
window streamed in segments (cut by max_records and by cancelling, each resumed from the
last token) delivers every record that survives in the log exactly once, newest first,
and that a stream with the default page_size does too without asking for more than 1000.
The environment variable INTEROP_ADVERSARIES (comma-separated, default all of
ties,retention,echo,strict,cut; "none" for none) picks the behaviours, to tell which one
a gateway trips over.

Usage: python3 tests/interop/stream_interop.py PATH-OF-audit-gateway
Needs: python3 -m pip install -r tests/interop/requirements.txt
Prints one line per check group and ends with `N passed, M failed` (exit 0 when M is 0).
"""

import collections
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

import adversary
from common import (Checks, expect_invalid_argument, generate_stubs, start_gateway,
                    start_watchdog, stop_gateway)

RECORDS = 2000  # in the log at the start: seqs 0..RECORDS-1
CAP = 37  # the stand-in's largest page
INSERTS = 7  # new records at the head before each request
FAULT_RATE = 0.2
SEED = 20240607
PAGE_SIZE = 50  # asked per page by the client; the gateway asks 8 more (the overlap)
CUT = 120  # max_records of the stream that is cut and resumed
GAP = 3 * CAP  # extra events between the cut and the resume: more than a page
BASE_MS = 1_700_000_000_000
ENDPOINT = "/wiki/rest/api/audit/since"
# Confluence's retention setting, which the gateway reads to warn of a window reaching
# past it (GetRetention).
RETENTION = "/wiki/rest/api/audit/retention"
BEARER = "interop"
SUMMARY = re.compile(r"event #(\d+)")
ADV_SEED = SEED + 1
ADV_PAGE_SIZE = 50  # the gateway asks 51: more than the adversary's cap of 40
# How the adversarial stream is cut: at max_records, or by cancelling after that many
# messages; each cut is resumed from the last token after ADV_GAP more events, and the
# last segment runs to the window's end.
ADV_PLAN = [("max_records", 150), ("cancel", 2), ("max_records", 200), ("cancel", 3)]
ADV_GAP = 3 * adversary.CAP
ADV_MOST_SEGMENTS = 12  # then the stream is taken for one that never ends
ADV_SECONDS = 20  # for all the segments of one adversarial stream (a few take 2 s)
ADV_RESUMABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
WATCHDOG_SECONDS = 60  # then give up, still stopping the gateways (the Rust test allows 120)
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
        if url.path == RETENTION:
            return self.reply(200, {}, json.dumps({"number": 10, "units": "YEARS"}).encode())
        if url.path != ENDPOINT:
            log.problems.append(("path", self.path))
            return self.reply(404, {}, b"")
        if not well_formed(query):
            log.problems.append(("query", self.path))
            return self.reply(400, {}, error_body(400, "bad query"))
        self.reply(*log.answer(query))

    def reply(self, status, headers, body, cut=False):
        """Sends an answer; `cut`: the whole body's Content-Length, half the body, then the
        connection closed, as when a proxy drops it mid-body."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if body else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if cut:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True  # the server then closes the socket
            return
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


def adversaries():
    """The adversarial behaviours INTEROP_ADVERSARIES asks for (default: all)."""
    text = os.environ.get("INTEROP_ADVERSARIES", ",".join(adversary.BEHAVIOURS))
    return [] if text.strip() == "none" else [b.strip() for b in text.split(",") if b.strip()]


def adversarial_seqs(message, log, i):
    """The seqs of one message of an adversarial stream, checking each record is the one
    the stand-in created under that seq."""
    assert message.resume_token, f"message {i} has no resume_token"
    seqs = []
    for r in message.records:
        match = SUMMARY.fullmatch(r.summary)
        assert match, f"message {i}: unexpected summary {r.summary!r}"
        seq = int(match.group(1))
        assert seq in log.date_of, f"message {i}: a record #{seq} the stand-in never made"
        want = adversary.record(seq, log.date_of[seq])
        got = (r.creation_date, r.description, r.associated_objects[0].name)
        assert got == (want["creationDate"], want["description"], f"Page {seq}"), (seq, got)
        seqs.append(seq)
    return seqs


def segment(stub, pb, log, fields, cancel_after, timeout):
    """One StreamSince call: (seqs delivered, last token, how it ended). `cancel_after`:
    cancel the call after that many messages."""
    call = stub.StreamSince(pb.StreamSinceRequest(**fields), timeout=timeout)
    seqs, token, ended = [], None, "end"
    try:
        for i, message in enumerate(call, 1):
            seqs += adversarial_seqs(message, log, i)
            token = message.resume_token
            if cancel_after and i >= cancel_after:
                ended = "cancelled"
                call.cancel()
                break
    except grpc.RpcError as e:
        if ended != "cancelled":
            ended = f"{e.code().name}: {e.details()}"
    return seqs, token, ended


def stream_in_segments(stub, pb, log, fields, plan):
    """Streams a window to its end, cut as `plan` says and resumed from the last token each
    time (also after a transient error, as README.md tells callers to); returns the seqs
    delivered in order, what each segment did, and errors that ended the stream."""
    delivered, segments, errors = [], [], []
    plan, token, transient = list(plan), None, 0
    deadline = time.monotonic() + ADV_SECONDS
    while True:
        if len(segments) == ADV_MOST_SEGMENTS or time.monotonic() >= deadline:
            errors.append(f"still not at the window's end after {len(segments)} segments "
                          f"and {ADV_SECONDS} s or less")
            break
        kind, amount = plan.pop(0) if plan else ("to the end", None)
        request = dict(fields)
        if token:
            request["resume_token"] = token
        if kind == "max_records":
            request["max_records"] = amount
        seqs, last, ended = segment(stub, pb, log, request,
                                    amount if kind == "cancel" else None,
                                    max(1.0, deadline - time.monotonic()))
        delivered += seqs
        token = last or token
        segments.append(f"{kind}{'' if amount is None else f'={amount}'}: {len(seqs)} "
                        f"records, {ended}")
        if ended == "cancelled" or (kind == "max_records" and len(seqs) == amount):
            log.grow(ADV_GAP)
            continue
        if ended != "end":
            if ended.split(":")[0] in ADV_RESUMABLE and transient < 3:
                transient += 1
                continue
            errors.append(f"the stream ended with {ended}")
        break
    return delivered, segments, errors


def check_exactly_once(log, since, delivered, segments, errors):
    """Fails, saying what went wrong, unless every record that survives in the log and lies
    in the window came once, newest first, and nothing else came."""
    present = log.present()
    head = log.first_page_head(since)
    if head is None:
        # Without a first page there is no window to account for: the errors say why.
        problems = errors + ["Confluence never served a whole page at offset 0"]
        head, expected = -1, set()
    else:
        expected = {seq for seq in present if seq <= head}
        problems = errors + adversary.exactly_once_problems(delivered, expected, head,
                                                            log.date_of)
    if problems:
        served = log.served[since:]
        status = collections.Counter(str(e["status"]) for e in served)
        raise AssertionError(
            "; ".join(problems) + f".\n  {len(delivered)} records delivered "
            f"({len(set(delivered))} distinct); window: #{head} and older, {len(expected)} of "
            f"them still in the log at the end.\n  segments: " + " | ".join(segments) +
            f"\n  Confluence answered {len(served)} requests: {dict(status)}; "
            f"limits asked: {sorted({e['asked'] for e in served})}")


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

    behaviours = adversaries()
    adv_log = adversary.AdversarialLog(ADV_SEED, behaviours)
    adv_upstream = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    adv_upstream.log = adv_log
    threading.Thread(target=adv_upstream.serve_forever, daemon=True).start()
    adv_gateway, adv_addr, adv_gateway_log = start_gateway(binary, [
        "--confluence-url", f"http://127.0.0.1:{adv_upstream.server_address[1]}/wiki",
        "--confluence-bearer-token", BEARER, "--upstream-retries", "6",
        "--upstream-backoff", "5ms", "--upstream-max-backoff", "50ms"])
    adversarial = f"against {'+'.join(behaviours) or 'no adversary'}"
    try:
        with grpc.insecure_channel(adv_addr, options=[
                ("grpc.max_receive_message_length", 64 << 20)]) as channel:
            stub = pb_grpc.AuditServiceStub(channel)

            with group(f"{adversarial}: a window streamed in segments (cut at max_records "
                       f"and by cancelling, resumed from the last token) delivers every "
                       f"surviving record once, newest first"):
                since = len(adv_log.served)
                delivered, segments, errors = stream_in_segments(
                    stub, pb, adv_log, {"number": 3, "page_size": ADV_PAGE_SIZE}, ADV_PLAN)
                check_exactly_once(adv_log, since, delivered, segments, errors)

            with group(f"{adversarial}: a stream with the default page_size (1000) delivers "
                       f"every surviving record once"
                       + (f", never asking for more than {adversary.LARGEST_LIMIT}"
                          if "strict" in behaviours else "")):
                settle(adv_log)
                since = len(adv_log.served)
                delivered, segments, errors = stream_in_segments(
                    stub, pb, adv_log, {"number": 2}, [])
                asked = max((e["asked"] for e in adv_log.served[since:]), default=0)
                if "strict" in behaviours and asked > adversary.LARGEST_LIMIT:
                    errors.append(f"Confluence was asked for limit={asked}")
                check_exactly_once(adv_log, since, delivered, segments, errors)
    finally:
        adv_code = stop_gateway(adv_gateway)
        adv_upstream.shutdown()
    if not all(checks.results):
        gateway_log = gateway_log + ["--- the adversarial stand-in's gateway (last 40 lines) ---"]
        gateway_log += adv_gateway_log[-40:]
    adv_status = collections.Counter(str(e["status"]) for e in adv_log.served)
    print(f"adversary ({'+'.join(behaviours) or 'none'}): {len(adv_log.served)} upstream "
          f"requests {dict(adv_status)}; the log went from {adversary.RECORDS} to "
          f"{len(adv_log.present())} records (seqs up to {adv_log.next_seq - 1}); the gateway "
          f"exited {adv_code}")
    status = [e["status"] for e in log.served]
    print(f"figures: {streamed} records in {messages} messages in "
          f"{time.monotonic() - started:.1f} s; {len(status)} upstream requests: "
          f"{status.count(200)} pages, {status.count(503)} × 503, {status.count(429)} × 429, "
          f"up to {log.most_in_flight} at once; "
          f"the log grew from {RECORDS} to {log.count} records")
    checks.finish(gateway_log)


if __name__ == "__main__":
    main()
