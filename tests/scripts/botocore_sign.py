#!/usr/bin/env python3
"""Signs HTTP requests with botocore's SigV4Auth, for the emulator's verifier tests.

Reads a JSON list of requests on stdin, writes the signed requests as a JSON list on
stdout. botocore is an independent SigV4 implementation: the Rust verifier must accept
what it signs and refuse tampered copies.

Input item:
  {"name": str, "method": str, "url": str, "headers": {name: value}, "body": str,
   "params": {name: value} (optional, sent as the query string),
   "access_key": str, "secret_key": str, "token": str|null,
   "region": str, "service": str, "timestamp": "YYYYMMDDTHHMMSSZ",
   "unsigned_payload": bool}
Output item:
  {"name": str, "method": str, "url": str (as sent), "headers": [[name, value], ...],
   "body": str}
"""

import datetime
import json
import sys

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def sign(item):
    at = datetime.datetime.strptime(item["timestamp"], "%Y%m%dT%H%M%SZ")
    # botocore takes the signing time from this function; pin it so signatures are
    # reproducible and the Rust side can verify them with a clock set to the same time.
    botocore.auth.get_current_datetime = lambda *args, **kwargs: at
    request = AWSRequest(
        method=item["method"],
        url=item["url"],
        headers=dict(item.get("headers") or {}),
        data=item.get("body", "").encode("utf-8"),
        params=item.get("params") or {},
    )
    if item.get("unsigned_payload"):
        # What Lattice clients send: the header is signed and the body is not hashed.
        request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    credentials = Credentials(item["access_key"], item["secret_key"], item.get("token"))
    SigV4Auth(credentials, item["service"], item["region"]).add_auth(request)
    prepared = request.prepare()
    headers = [[name, value] for name, value in prepared.headers.items()]
    return {
        "name": item["name"],
        "method": prepared.method,
        "url": prepared.url,
        "headers": headers,
        "body": item.get("body", ""),
    }


def main():
    items = json.load(sys.stdin)
    json.dump([sign(item) for item in items], sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
