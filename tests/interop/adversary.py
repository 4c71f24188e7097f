"""An adversarial Confluence audit log for stream_interop.py, and the exactly-once ledger
that judges a stream of it.

Written from what Confluence's `GET /rest/api/audit/since` is allowed to do, not from the
Rust simulator (crates/confluence-sim), so the two can disagree and one catch the other.
Each behaviour can be switched off, to tell which one a gateway trips over:

- `ties`: records come in groups of 1..TIES sharing one `creationDate` millisecond, and
  every request lists each group in an order of its own (seeded by the request's number);
- `retention`: DELETES of the oldest records are deleted before each request is served;
- `echo`: pages are capped at CAP records while the body echoes the *requested* `limit`,
  and OMIT_RATE of the answers carry neither `limit` nor `size`;
- `strict`: `limit` over 1000 is answered with 400 and Confluence's JSON error body;
- `cut`: CUT_RATE of the 200 answers send the full body's Content-Length, write half the
  body and close the connection.

New events (INSERTS per request, one millisecond per batch) arrive at the head whatever is
switched off. Records are identified by `event #<seq>` in `summary` and `(event <seq>)` in
`description`; every record ever created is remembered with its date, deleted or not.
"""

import collections
import json
import random
import threading

BEHAVIOURS = ("ties", "retention", "echo", "strict", "cut")
RECORDS = 1500  # in the log at the start
TIES = 5  # largest group of records sharing a millisecond
CAP = 40  # the largest page served, whatever `limit` asks
INSERTS = 3  # new records at the head before each request
DELETES = 4  # oldest records deleted before each request
CUT_RATE = 0.10
OMIT_RATE = 0.25
LARGEST_LIMIT = 1000  # Confluence's documented largest `limit`
BASE_MS = 1_710_000_000_000
SPACING_MS = 1000  # between consecutive milliseconds of records
CATEGORIES = ["Permissions", "Users and groups", "Spaces", "Security", "Apps"]


def record(seq, date):
    """Record `seq` dated `date`, in Atlassian's JSON shape: unique per seq, so records that
    share a millisecond still differ."""
    user = seq % 11
    return {
        "author": {
            "type": "user", "displayName": f"Admin {user}", "operations": None,
            "accountId": f"712020:{user:08x}", "accountType": "atlassian",
        },
        "remoteAddress": f"192.0.2.{seq % 256}",
        "creationDate": date,
        "summary": f"event #{seq}",
        "description": f"adversarial audit event (event {seq})",
        "category": CATEGORIES[seq % len(CATEGORIES)],
        "sysAdmin": seq % 2 == 0,
        "affectedObject": {"name": f"Space {seq % 5}", "objectType": "Space"},
        "changedValues": [],
        "associatedObjects": [{"name": f"Page {seq}", "objectType": "Page"}],
    }


def error_body(status, message):
    return json.dumps({"statusCode": status, "message": message, "data": {
        "authorized": True, "valid": status != 400, "errors": [],
        "successful": False}}).encode()


class AdversarialLog:
    """The log, oldest first, and what each request was served. Thread-safe."""

    def __init__(self, seed, behaviours):
        unknown = set(behaviours) - set(BEHAVIOURS)
        assert not unknown, f"unknown behaviours {unknown}; known: {BEHAVIOURS}"
        self.on = set(behaviours)
        self.seed = seed
        self.lock = threading.Lock()
        self.rng = random.Random(seed)  # group sizes, cuts and omissions
        self.entries = collections.deque()  # (date, seq), oldest first
        self.date_of = {}  # every seq ever created -> its creationDate
        self.next_seq = 0
        self.next_date = BASE_MS
        self.served = []  # one dict per audit request, in the order they were served
        self.problems = []  # requests Confluence would have refused (see StandIn)
        while self.next_seq < RECORDS:
            size = self.rng.randint(1, TIES) if "ties" in self.on else 1
            self._add(min(size, RECORDS - self.next_seq))

    def begin(self):
        """A request arrives (the stand-in's hook; nothing to count here)."""

    def end(self):
        """A request is answered."""

    def _add(self, n):
        """Adds `n` records at the head, sharing one new millisecond."""
        for _ in range(n):
            self.entries.append((self.next_date, self.next_seq))
            self.date_of[self.next_seq] = self.next_date
            self.next_seq += 1
        self.next_date += SPACING_MS

    def grow(self, n):
        """Adds `n` events at the head: one millisecond with ties on, else one each."""
        with self.lock:
            self._grow(n)

    def _grow(self, n):
        if "ties" in self.on:
            self._add(n)
        else:
            for _ in range(n):
                self._add(1)

    def shrink(self, n):
        """Deletes the `n` oldest records (fewer if the log is shorter)."""
        with self.lock:
            self._shrink(n)

    def _shrink(self, n):
        for _ in range(min(n, len(self.entries))):
            self.entries.popleft()

    def present(self):
        """The seqs in the log now."""
        with self.lock:
            return {seq for _, seq in self.entries}

    def listing(self, number):
        """The log newest first as request `number` lists it: with ties on, each group of
        one millisecond in an order drawn for this request."""
        newest_first = list(reversed(self.entries))
        if "ties" not in self.on:
            return [seq for _, seq in newest_first]
        order = random.Random(f"{self.seed}/order/{number}")
        listed, group = [], []
        for date, seq in newest_first:
            if group and group[0][0] != date:
                order.shuffle(group)
                listed += [s for _, s in group]
                group = []
            group.append((date, seq))
        order.shuffle(group)
        listed += [s for _, s in group]
        return listed

    def answer(self, query):
        """(status, headers, body, cut) for one well-formed audit request."""
        start, asked = int(query["start"]), int(query["limit"])
        with self.lock:
            self._grow(INSERTS)
            if "retention" in self.on:
                self._shrink(DELETES)
            number = len(self.served) + 1
            entry = {"number": number, "start": start, "asked": asked,
                     "head": self.next_seq - 1}
            self.served.append(entry)
            if "strict" in self.on and asked > LARGEST_LIMIT:
                entry["status"] = 400
                return 400, {}, error_body(400, f"limit must be at most {LARGEST_LIMIT}, "
                                                f"got {asked}"), False
            limit = min(asked, CAP) if "echo" in self.on else asked
            seqs = self.listing(number)[start:start + limit]
            cut = "cut" in self.on and self.rng.random() < CUT_RATE
            omit = "echo" in self.on and self.rng.random() < OMIT_RATE
            entry["status"] = "cut" if cut else 200
            entry["seqs"] = seqs
            records = [record(s, self.date_of[s]) for s in seqs]
        body = {"results": records, "start": start}
        if not omit:
            # Echoed as asked: a capped page looks like the window's last.
            body["limit"], body["size"] = asked, len(seqs)
        base = "http://127.0.0.1/wiki"
        body["_links"] = {"base": base, "context": "/wiki",
                          "self": f"{base}/rest/api/audit/since"}
        return 200, {}, json.dumps(body).encode(), cut

    def first_page_head(self, since):
        """The newest seq when the first whole page at offset 0 was served, from request
        `since` on (the stream's window holds it and every older record); None if none was."""
        with self.lock:
            firsts = [e for e in self.served[since:]
                      if e["start"] == 0 and e["status"] == 200]
        return firsts[0]["head"] if firsts else None


def first(items, n=8):
    """The first `n` items of a sorted copy, for a short report."""
    items = sorted(items, reverse=True)
    return f"{items[:n]}{' ...' if len(items) > n else ''}"


def exactly_once_problems(delivered, expected, head, date_of):
    """What is wrong with `delivered` (seqs in delivery order, every segment concatenated)
    given `expected` (seqs that must each come once) and `head` (the newest seq the
    stream's window holds); an empty list when nothing is. Ties may come in any order,
    deleted records may be missing, nothing may repeat or be newer than `head`."""
    problems = []
    counts = collections.Counter(delivered)
    repeated = {seq: n for seq, n in counts.items() if n > 1}
    if repeated:
        extra = sum(n - 1 for n in repeated.values())
        problems.append(f"{len(repeated)} records delivered more than once ({extra} extra "
                        f"copies), e.g. {first(repeated)}")
    missing = expected - counts.keys()
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} surviving records missing, "
                        f"e.g. {first(missing)}")
    foreign = {seq for seq in counts if seq not in date_of or seq > head}
    if foreign:
        problems.append(f"{len(foreign)} records outside the window (newer than its first "
                        f"page, or unknown), e.g. {first(foreign)}")
    disorder = [i for i in range(len(delivered) - 1)
                if date_of.get(delivered[i], 0) < date_of.get(delivered[i + 1], 0)]
    if disorder:
        i = disorder[0]
        problems.append(f"newest first broken {len(disorder)} times, first at index {i}: "
                        f"{delivered[max(0, i - 2):i + 3]}")
    return problems
