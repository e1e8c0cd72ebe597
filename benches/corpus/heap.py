"""A language runtime's heap for the memory corpus: a small web shop's
in-memory state, built from real text, kept alive while memory is saved.

It reads text files (source code, documentation) from the directories
given, and from their words builds what a web application process holds:
a product catalogue, users with profiles, orders with line items, a
session table that expires old sessions (so the heap has holes and
garbage, as a long-running process does), a cache of rendered JSON
responses and their parsed copies, and an inverted index over the text.
It grows until the process's resident memory reaches --target-mib, prints
the ready marker on stdout and sleeps until it is killed.

Deterministic for a given input and seed (run it with PYTHONHASHSEED=0).
The token "heap-token-" + reversed(nonce) lives in the heap only (never in
a file or argv), so a memory image can be checked to hold the heap.
"""

import argparse
import collections
import datetime
import json
import os
import random
import re
import sys
import time

READY = "WANMIG-CORPUS-READY"
WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{2,}")


def rss_mib():
    """Resident set size of this process, MiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def read_text(dirs, limit_bytes):
    """Lines of the text files under `dirs`, in sorted path order."""
    docs = []
    total = 0
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            subdirs.sort()
            for name in sorted(files):
                if not name.endswith((".py", ".txt", ".rst", ".md", ".h", ".c", ".html")):
                    continue
                path = os.path.join(root, name)
                try:
                    with open(path, encoding="utf-8", errors="replace") as f:
                        lines = f.read().splitlines()
                except OSError:
                    continue
                docs.append((path, lines))
                total += sum(len(l) for l in lines)
                if total >= limit_bytes:
                    return docs
    return docs


class Product:
    def __init__(self, sku, title, description, price, tags):
        self.sku = sku
        self.title = title
        self.description = description
        self.price = price
        self.tags = tags
        self.stock = collections.Counter()
        self.reviews = []


class User:
    __slots__ = ("id", "name", "email", "signup", "address", "prefs", "orders", "tags")

    def __init__(self, uid, name, email, signup, address, prefs, tags):
        self.id = uid
        self.name = name
        self.email = email
        self.signup = signup
        self.address = address
        self.prefs = prefs
        self.orders = []
        self.tags = tags


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", action="append", required=True,
                    help="directory of text files to draw words from (repeatable)")
    ap.add_argument("--target-mib", type=int, required=True,
                    help="grow until resident memory reaches this many MiB")
    ap.add_argument("--nonce-file", required=True,
                    help="file holding this build's nonce")
    ap.add_argument("--seed", type=int, default=12)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    with open(args.nonce_file) as f:
        nonce = f.read().strip()
    token = "heap-token-" + nonce[::-1]

    # The document store and its inverted index.
    docs = read_text(args.text, max(4 << 20, (args.target_mib << 20) // 24))
    index = collections.defaultdict(list)
    words = []
    seen = set()
    for doc_id, (_, lines) in enumerate(docs):
        for line_no, line in enumerate(lines):
            for w in WORD.findall(line):
                lw = w.lower()
                postings = index[lw]
                if len(postings) < 200:
                    postings.append(doc_id << 20 | line_no)
                if lw not in seen:
                    seen.add(lw)
                    words.append(lw)
    sentences = [l.strip() for _, lines in docs for l in lines if len(l.strip()) > 30]
    if not words or not sentences:
        sys.exit("heap.py: no text found under " + ", ".join(args.text))

    def phrase(n):
        return " ".join(rng.choice(words) for _ in range(n))

    # The catalogue.
    products = []
    for i in range(max(2000, args.target_mib * 20)):
        p = Product(
            sku="SKU-%06d" % i,
            title=phrase(3).title(),
            description=" ".join(rng.choice(sentences) for _ in range(rng.randint(1, 4))),
            price=round(rng.uniform(0.5, 900.0), 2),
            tags=frozenset(rng.choice(words) for _ in range(rng.randint(1, 6))),
        )
        p.stock.update({"warehouse-%d" % rng.randint(1, 12): rng.randint(0, 500)})
        products.append(p)
    by_sku = {p.sku: p for p in products}

    users = {}
    sessions = collections.OrderedDict()
    responses = collections.OrderedDict()
    parsed = {}
    epoch = datetime.datetime(2024, 1, 1)
    uid = 0
    last_report = time.monotonic()

    while rss_mib() < args.target_mib:
        for _ in range(500):
            uid += 1
            first, last = rng.choice(words).title(), rng.choice(words).title()
            u = User(
                uid,
                first + " " + last,
                "%s.%s%d@%s.example" % (first.lower(), last.lower(), uid, rng.choice(words)),
                epoch + datetime.timedelta(seconds=rng.randint(0, 3e7)),
                {
                    "street": "%d %s Street" % (rng.randint(1, 9999), rng.choice(words).title()),
                    "city": rng.choice(words).title(),
                    "zip": "%05d" % rng.randint(0, 99999),
                },
                {"newsletter": rng.random() < 0.3, "lang": rng.choice(["en", "de", "fr", "ja"]),
                 "theme": rng.choice(["dark", "light"])},
                [rng.choice(words) for _ in range(rng.randint(0, 5))],
            )
            if uid == 4242:
                u.tags.append(token)
            users[uid] = u
            for _ in range(rng.randint(0, 4)):
                items = []
                for _ in range(rng.randint(1, 6)):
                    p = rng.choice(products)
                    items.append((p, rng.randint(1, 5), p.price))
                order = {
                    "id": "ORD-%d-%d" % (uid, len(u.orders)),
                    "user": u,
                    "items": items,
                    "total": round(sum(q * price for _, q, price in items), 2),
                    "placed": u.signup + datetime.timedelta(days=rng.randint(0, 400)),
                    "status": rng.choice(["paid", "shipped", "delivered", "returned"]),
                    "note": rng.choice(sentences) if rng.random() < 0.2 else None,
                }
                u.orders.append(order)
                if rng.random() < 0.1:
                    p = items[0][0]
                    p.reviews.append((uid, rng.randint(1, 5), rng.choice(sentences)))
            # A session per user visit; old ones expire (garbage and holes).
            token_hex = "%032x" % rng.getrandbits(128)
            sessions[token_hex] = {
                "user": uid,
                "cart": [rng.choice(products).sku for _ in range(rng.randint(0, 8))],
                "history": [rng.choice(words) for _ in range(rng.randint(5, 30))],
                "csrf": "%064x" % rng.getrandbits(256),
            }
            while len(sessions) > 20000:
                sessions.popitem(last=False)
            # The rendered profile page, as the response cache keeps it.
            body = json.dumps({
                "user": {"id": uid, "name": u.name, "email": u.email,
                         "address": u.address, "prefs": u.prefs},
                "orders": [{"id": o["id"], "total": o["total"], "status": o["status"],
                            "placed": o["placed"].isoformat(),
                            "items": [{"sku": p.sku, "title": p.title, "qty": q}
                                      for p, q, _ in o["items"]]} for o in u.orders],
            }, indent=1)
            key = "/users/%d" % uid
            responses[key] = body
            if rng.random() < 0.5:
                parsed[key] = json.loads(body)
            while len(responses) > 60000:
                old, _ = responses.popitem(last=False)
                parsed.pop(old, None)
        now = time.monotonic()
        if now - last_report > 10:
            last_report = now
            print("heap.py: %d users, %.0f MiB resident" % (uid, rss_mib()), flush=True)

    assert by_sku and index
    print("heap.py: %d users, %d products, %d index words, %.0f MiB resident"
          % (uid, len(products), len(index), rss_mib()), flush=True)
    print(READY, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
