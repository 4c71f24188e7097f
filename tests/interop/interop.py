"""Cross-language interop check of audit-gateway's `GetSince`.

An independent client (Python stubs generated here from proto/ with grpc_tools.protoc)
calls the gateway binary, which sits in front of an independent Confluence stand-in
(http.server serving Atlassian's sample body), and checks that the sample arrives field
for field, that Confluence is asked exactly what a careful curl would ask, and that an
invalid request is refused with a google.rpc.BadRequest detail.

Usage: python3 tests/interop/interop.py PATH-OF-audit-gateway
Needs: python3 -m pip install -r tests/interop/requirements.txt
Prints one line per check group and ends with `N passed, M failed` (exit 0 when M is 0).
"""

import base64
import json
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

from common import (REPO, Checks, expect_invalid_argument, generate_stubs, start_gateway,
                    start_watchdog, stop_gateway)

FIXTURE = REPO / "tests/fixtures/atlassian-audit-since-sample.json"
ENDPOINT = "/wiki/rest/api/audit/since"
EMAIL, TOKEN = "interop@example.com", "interop-token"
AUTHORIZATION = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
SEARCH = "a&b #é"
WATCHDOG_SECONDS = 60  # then give up, still stopping the gateway (the Rust test allows 120)


class StandIn(BaseHTTPRequestHandler):
    """Confluence: the sample body for the audit endpoint, with basic auth."""

    body = FIXTURE.read_bytes()
    seen = []  # raw request targets (path and query), in order
    auth = []  # Authorization headers received

    def do_GET(self):
        self.seen.append(self.path)
        self.auth.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != AUTHORIZATION:
            self.answer(401, b"", "text/plain")
        elif urllib.parse.urlsplit(self.path).path != ENDPOINT:
            self.answer(404, b"", "text/plain")
        else:
            self.answer(200, self.body, "application/json")

    def answer(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def check_page(page, want):
    """The page equals the fixture body, field for field."""
    assert (page.start, page.limit, page.size) == (want["start"], want["limit"], want["size"]), \
        (page.start, page.limit, page.size)
    assert len(page.links) == 0 and want["_links"] == {}, dict(page.links)
    assert not page.HasField("unknown_fields"), page.unknown_fields
    assert len(page.results) == len(want["results"]) == 2, len(page.results)
    for i, (r, w) in enumerate(zip(page.results, want["results"])):
        try:
            check_record(r, w)
        except AssertionError as e:
            raise AssertionError(f"results[{i}]: {e}") from e


def check_record(r, w):
    a, wa = r.author, w["author"]
    assert r.HasField("author"), "author unset"
    assert (a.type, a.display_name) == (wa["type"], wa["displayName"]), (a.type, a.display_name)
    assert wa["operations"] is None, "the fixture changed"
    assert a.HasField("operations"), "null operations must be a null Value, not absent"
    assert a.operations.WhichOneof("kind") == "null_value", a.operations
    for field, key in [("username", "username"), ("user_key", "userKey"),
                       ("account_id", "accountId"), ("account_type", "accountType"),
                       ("external_collaborator", "externalCollaborator"),
                       ("is_external_collaborator", "isExternalCollaborator"),
                       ("is_guest", "isGuest"), ("public_name", "publicName")]:
        assert a.HasField(field) == (key in wa), f"author.{field} presence"
        if key in wa:
            assert getattr(a, field) == wa[key], (field, getattr(a, field))
    assert not a.HasField("account_id"), a.account_id
    assert not a.HasField("unknown_fields"), a.unknown_fields
    assert r.remote_address == w["remoteAddress"], r.remote_address
    assert r.creation_date == w["creationDate"] < 0, r.creation_date
    seconds, millis = divmod(w["creationDate"], 1000)
    assert (r.creation_time.seconds, r.creation_time.nanos) == (seconds, millis * 1_000_000), \
        r.creation_time
    got = (r.summary, r.description, r.category)
    assert got == (w["summary"], w["description"], w["category"]), got
    assert r.sys_admin is w["sysAdmin"], r.sys_admin
    assert not r.HasField("super_admin") and "superAdmin" not in w, r.super_admin
    assert r.HasField("affected_object"), "affected_object unset"
    assert objects([r.affected_object]) == [w["affectedObject"]], r.affected_object
    assert [{"name": c.name, "oldValue": c.old_value, "newValue": c.new_value}
            for c in r.changed_values] == w["changedValues"], r.changed_values
    assert not any(c.HasField("hidden_old_value") or c.HasField("hidden_new_value")
                   or c.HasField("unknown_fields") for c in r.changed_values), r.changed_values
    assert objects(r.associated_objects) == w["associatedObjects"], r.associated_objects
    assert not r.HasField("unknown_fields"), r.unknown_fields


def objects(objs):
    assert not any(o.HasField("unknown_fields") for o in objs), objs
    return [{"name": o.name, "objectType": o.object_type} for o in objs]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    start_watchdog("interop.py", WATCHDOG_SECONDS)
    want = json.loads(FIXTURE.read_text(encoding="utf-8"))
    checks = Checks()
    group = checks.group

    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = generate_stubs(tmp)
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    gateway, addr, log = start_gateway(binary, [
        "--confluence-url", f"http://127.0.0.1:{upstream.server_address[1]}/wiki",
        "--confluence-email", EMAIL, "--confluence-api-token", TOKEN])
    try:
        with grpc.insecure_channel(addr) as channel:
            stub = pb_grpc.AuditServiceStub(channel)
            with group("GetSince with defaults returns Atlassian's sample field for field"):
                check_page(stub.GetSince(pb.GetSinceRequest(), timeout=30), want)
            with group("GetSince with every field set returns the sample field for field"):
                check_page(stub.GetSince(pb.GetSinceRequest(
                    number=2, units=pb.TIME_UNIT_DAYS, search_string=SEARCH,
                    start=1, limit=5), timeout=30), want)
            with group("Confluence is asked exactly what a careful curl asks"):
                encoded = urllib.parse.quote(SEARCH, safe="")
                assert encoded == "a%26b%20%23%C3%A9", encoded
                assert StandIn.seen == [
                    f"{ENDPOINT}?number=3&units=MONTHS&start=0&limit=1000",
                    f"{ENDPOINT}?number=2&units=DAYS&searchString={encoded}&start=1&limit=5",
                ], StandIn.seen
                assert StandIn.auth == [AUTHORIZATION] * 2, "wrong Authorization header"
            with group("an invalid limit gets INVALID_ARGUMENT with a BadRequest naming it"):
                expect_invalid_argument(
                    lambda: stub.GetSince(pb.GetSinceRequest(limit=5000), timeout=30), "limit")
                assert len(StandIn.seen) == 2, f"reached Confluence: {StandIn.seen}"
    finally:
        code = stop_gateway(gateway)
        upstream.shutdown()
    with group("the gateway exits 0 on SIGTERM"):
        assert code == 0, f"exit status {code}"
    checks.finish(log)


if __name__ == "__main__":
    main()
