#!/usr/bin/env python3
"""A minimal echomesh-gateway webhook receiver (Python 3 standard library only).

It checks the Standard Webhooks signature, refuses stale timestamps, and records each
message exactly once although the gateway delivers at least once: the message id (equal to
the `webhook-id` header) is the idempotency key, inserted into SQLite in the same
transaction as the message; a repeat is answered 200 and ignored.

    python3 webhook_receiver.py --port 8080 --secret-file webhook.secret --db inbox.sqlite \
        --files-dir received/

Received files (inlined as base64 below the gateway's limit) are written to --files-dir as
ID-NAME; larger ones carry a `url` to fetch with the gateway's API token. The echomesh tests
run this very file as their webhook receiver.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sqlite3
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECS = 300  # refuse replays of old deliveries


def load_secrets(paths):
    return [open(p, "rb").read().strip() for p in paths]


def verify(secrets, headers, body):
    """True when one of the `v1,` signatures matches one of our secrets."""
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    if not msg_id or not ts.isdigit() or abs(time.time() - int(ts)) > TOLERANCE_SECS:
        return False
    signed = f"{msg_id}.{ts}.".encode() + body
    for secret in secrets:
        expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
        for sig in headers.get("webhook-signature", "").split():
            version, _, value = sig.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return True
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--secret-file", action="append", required=True)
    ap.add_argument("--db", default="inbox.sqlite")
    ap.add_argument("--files-dir", default="received")
    ap.add_argument("--log", help="append every delivery (repeats too) as a JSON line")
    args = ap.parse_args()
    secrets = load_secrets(args.secret_file)
    os.makedirs(args.files_dir, exist_ok=True)
    db = sqlite3.connect(args.db, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, body TEXT NOT NULL)")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            if not verify(secrets, self.headers, body):
                self.send_response(401)
                self.end_headers()
                return
            msg = json.loads(body)
            if args.log:
                with open(args.log, "a") as f:
                    f.write(json.dumps({"id": msg["id"], "webhook_id": self.headers["webhook-id"]}) + "\n")
            if "file" in msg and "content_base64" in msg["file"]:
                # Written before the record: a crash in between leaves a file that the
                # repeated delivery writes again.
                name = os.path.basename(msg["file"]["name"]) or "file"
                data = base64.b64decode(msg["file"]["content_base64"])
                with open(os.path.join(args.files_dir, f"{msg['id']}-{name}"), "wb") as f:
                    f.write(data)
            # Exactly once: the id is the primary key; a repeat inserts nothing.
            inserted = db.execute(
                "INSERT OR IGNORE INTO messages (id, body) VALUES (?, ?)", (msg["id"], body.decode())
            ).rowcount
            self.send_response(204 if inserted else 200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
