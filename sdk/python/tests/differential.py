"""The Python half of the differential test (tests/e2e/python_sdk.rs drives it).

Reads ``{"root": KEY, "forwarding": KEY, "cases": [{"token", "tool", "args", "now",
"forwarded"}]}`` on stdin, where ``args`` is the JSON *text* of the arguments (parsed here
by Python's json, as a tool server would), and prints one decision per case: ``"allow"``
or ``"deny: <why>"``, judged by ``leash.capability.authorize``."""

from __future__ import annotations

import json
import sys

import biscuit_auth

from leash import capability


def decide(
    case: dict[str, object], root: biscuit_auth.PublicKey, forwarding: biscuit_auth.PublicKey
) -> str:
    try:
        token = biscuit_auth.Biscuit.from_base64(str(case["token"]), root)
        arguments = json.loads(str(case["args"]))
        now = case["now"]
        assert isinstance(now, int)
        capability.authorize(
            token, str(case["tool"]), arguments, now, forwarding if case["forwarded"] else None
        )
    except capability.TOKEN_ERRORS as err:  # ArgumentError is a ValueError
        return f"deny: {err}"
    return "allow"


def main() -> None:
    request = json.load(sys.stdin)
    root = biscuit_auth.PublicKey(request["root"])
    forwarding = biscuit_auth.PublicKey(request["forwarding"])
    print(json.dumps([decide(case, root, forwarding) for case in request["cases"]]))


if __name__ == "__main__":
    main()
