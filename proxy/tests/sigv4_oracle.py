#!/usr/bin/env python3
"""SigV4 oracle for lattice-proxy's tests: botocore recomputes each signature.

Reads one JSON object per line on stdin (SigV4 unless "op" says "v4a" or "v4a_public_key"):
  {"method", "url", "headers": {name: value}, "access_key", "secret_key",
   "token" (or null), "region", "service", "amz_date"}
where `url` is the request as the upstream received it (https://host/path?query) and
`headers` are exactly the headers named in the received SignedHeaders. Writes one JSON
object per line: {"authorization", "canonical_request", "string_to_sign"} or {"error"}.

botocore is an independent SigV4 implementation (Python, used by the AWS CLI); the proxy
signs with aws-sigv4 (Rust). The canonical query is taken from the URL as received, like a
server would, so an encoding the proxy forwarded differently from what it signed fails here.
"""
import hashlib
import hmac
import json
import struct
import sys

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def expected(r):
    creds = Credentials(r["access_key"], r["secret_key"], r.get("token"))
    auth = SigV4Auth(creds, r["service"], r["region"])
    req = AWSRequest(method=r["method"], url=r["url"], headers=r["headers"], data=b"")
    req.context["timestamp"] = r["amz_date"]
    canonical = auth.canonical_request(req)
    sts = auth.string_to_sign(req, canonical)
    signature = auth.signature(sts, req)
    auth._inject_signature_to_request(req, signature)
    return {
        "authorization": req.headers["Authorization"],
        "canonical_request": canonical,
        "string_to_sign": sts,
    }


# SigV4A (AWS4-ECDSA-P256-SHA256), implemented here from the published algorithm (a KDF in
# counter mode over HMAC-SHA256, then ECDSA P-256 with SHA-256) and checked with the
# `cryptography` package; the proxy signs with aws-sigv4's v4a module.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def v4a_private_scalar(access_key, secret_key):
    input_key = b"AWS4A" + secret_key.encode()
    label = b"AWS4-ECDSA-P256-SHA256"
    for counter in range(1, 255):
        fixed = (
            struct.pack(">I", 1)
            + label
            + b"\x00"
            + access_key.encode()
            + bytes([counter])
            + struct.pack(">I", 256)
        )
        k0 = int.from_bytes(hmac.new(input_key, fixed, hashlib.sha256).digest(), "big")
        if k0 <= P256_N - 2:
            return k0 + 1
    raise ValueError("no SigV4A key")


def v4a_public_key(r):
    from cryptography.hazmat.primitives.asymmetric import ec

    d = v4a_private_scalar(r["access_key"], r["secret_key"])
    pub = ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers()
    return {"x": "%064x" % pub.x, "y": "%064x" % pub.y}


def v4a_verify(r):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    creds = Credentials(r["access_key"], r["secret_key"], r.get("token"))
    auth = SigV4Auth(creds, r["service"], r["region"])
    req = AWSRequest(method=r["method"], url=r["url"], headers=r["headers"], data=b"")
    req.context["timestamp"] = r["amz_date"]
    canonical = auth.canonical_request(req)
    scope = "%s/%s/aws4_request" % (r["amz_date"][:8], r["service"])
    sts = "\n".join(
        [
            "AWS4-ECDSA-P256-SHA256",
            r["amz_date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    d = v4a_private_scalar(r["access_key"], r["secret_key"])
    public = ec.derive_private_key(d, ec.SECP256R1()).public_key()
    try:
        public.verify(bytes.fromhex(r["signature"]), sts.encode(), ec.ECDSA(hashes.SHA256()))
        valid = True
    except InvalidSignature:
        valid = False
    signed = auth.signed_headers(auth.headers_to_sign(req))
    return {
        "authorization_prefix": "AWS4-ECDSA-P256-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature="
        % (r["access_key"], scope, signed),
        "valid": valid,
        "canonical_request": canonical,
        "string_to_sign": sts,
    }


def handle(r):
    op = r.get("op", "v4")
    if op == "v4a_public_key":
        return v4a_public_key(r)
    if op == "v4a":
        return v4a_verify(r)
    return expected(r)


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            out = handle(json.loads(line))
        except Exception as e:  # report, keep serving
            out = {"error": repr(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
