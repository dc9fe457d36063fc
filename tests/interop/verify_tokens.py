#!/usr/bin/env python3
"""Verifies Leash tokens with biscuit-python, a Biscuit implementation nobody here wrote.

Only public material is used: the root keys and the forwarding key are fetched from the
broker's /.well-known/leash/keys. For each token it checks the signature, then runs an
authorizer with the facts Leash's verifier supplies (time, call, one arg per argument) and
Leash's one policy, `allow if call($t), tool($t)`; and once more with the check a tool
server adds to accept only forwarded capabilities,
`check if forwarded($t), call($t) trusting <forwarding key>`. Prints one JSON object.

Usage: verify_tokens.py BROKER_URL TASK_TOKEN CAPABILITY TOOL OTHER_TOOL ARGS_JSON
"""
import json
import sys
import urllib.request

from biscuit_auth import AuthorizerBuilder, Biscuit, Fact, PublicKey

url, task_token, capability, tool, other_tool, args_json = sys.argv[1:7]
args = json.loads(args_json)
key_set = json.load(urllib.request.urlopen(url + "/.well-known/leash/keys"))
by_kid = {key["kid"]: PublicKey(key["public_key"]) for key in key_set["keys"]}
forwarding_text = key_set.get("forwarding_key")
forwarding = PublicKey(forwarding_text) if forwarding_text else None


def root(kid):
    if kid not in by_kid:
        raise ValueError("unknown root key id %r" % (kid,))
    return by_kid[kid]


def authorize(token, called, forwarded_only=False):
    source = "call({tool}); allow if call($t), tool($t);"
    scopes = {}
    if forwarded_only:
        source += " check if forwarded($t), call($t) trusting {forwarding};"
        scopes = {"forwarding": forwarding}
    builder = AuthorizerBuilder(source, {"tool": called}, scopes)
    builder.set_time()
    for name, value in args.items():
        builder.add_fact(Fact("arg({name}, {value})", {"name": name, "value": value}))
    try:
        builder.build(token).authorize()
        return "allowed"
    except Exception as err:  # the authorizer's refusal, with the failed checks
        return "denied: %s" % err


def external_key(token, index):
    """The key that signed block `index` as a third party, in Biscuit's textual form."""
    key = token.block_external_key(index)
    return None if key is None else str(key)


def report(text):
    token = Biscuit.from_base64(text, root)
    return {
        "verified": True,
        "blocks": token.block_count(),
        "revocation_ids": [rid.hex() if isinstance(rid, bytes) else str(rid) for rid in token.revocation_ids],
        "authority": token.block_source(0),
        "last_block": token.block_source(token.block_count() - 1),
        "call": authorize(token, tool),
        "other_tool": authorize(token, other_tool),
        "external_keys": [external_key(token, i) for i in range(token.block_count())],
        "forwarded_call": authorize(token, tool, True) if forwarding else "no forwarding key",
        "forwarded_other_tool": authorize(token, other_tool, True) if forwarding else "no forwarding key",
    }


forged = task_token[:40] + ("A" if task_token[40] != "A" else "B") + task_token[41:]
try:
    Biscuit.from_base64(forged, root)
    forged_result = "accepted"
except Exception as err:
    forged_result = "rejected: %s" % type(err).__name__

print(json.dumps({
    "forwarding_key": forwarding_text,
    "task_token": report(task_token),
    "capability": report(capability),
    "forged": forged_result,
}))
