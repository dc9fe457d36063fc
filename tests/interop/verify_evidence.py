"""Independent check of Leash task evidence with software nobody here wrote.

`rfc8785` (Trail of Bits' RFC 8785 JSON Canonicalization Scheme) rebuilds the canonical
bytes of `evidence`; `cryptography` checks the Ed25519 signature over them with the root
key published at `/.well-known/leash/keys`.

Usage: python verify_evidence.py KEYS_URL FILE [FILE ...]
Prints one line per file: `ok <file>` or `bad <file>: <why>`; exits 0 when every file
verifies, 1 otherwise.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.request
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def root_keys(url: str) -> dict[int, Ed25519PublicKey]:
    with urllib.request.urlopen(url, timeout=10) as response:
        published: dict[str, Any] = json.load(response)
    keys: dict[int, Ed25519PublicKey] = {}
    for key in published["keys"]:
        algorithm, _, hex_key = str(key["public_key"]).partition("/")
        if algorithm != "ed25519":
            continue
        keys[int(key["kid"])] = Ed25519PublicKey.from_public_bytes(
            bytes.fromhex(hex_key)
        )
    return keys


def unbase64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check(path: str, keys: dict[int, Ed25519PublicKey]) -> str | None:
    """Why the file does not verify, or None."""
    try:
        with open(path, "rb") as file:
            document = json.loads(file.read().decode("utf-8"))
        signature = document["signature"]
        if signature["alg"] != "ed25519":
            return f"alg is {signature['alg']!r}"
        key = keys.get(int(signature["kid"]))
        if key is None:
            return f"no published root key {signature['kid']}"
        key.verify(unbase64url(signature["value"]), rfc8785.dumps(document["evidence"]))
    except InvalidSignature:
        return "the signature does not verify over the canonical evidence"
    except (ValueError, KeyError, TypeError, rfc8785.CanonicalizationError) as err:
        return f"unreadable: {type(err).__name__}: {err}"
    return None


def main() -> int:
    keys = root_keys(sys.argv[1])
    failed = False
    for path in sys.argv[2:]:
        problem = check(path, keys)
        if problem is None:
            print(f"ok {path}")
        else:
            failed = True
            print(f"bad {path}: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
