"""The capability vocabulary, evaluated exactly as the Rust SDK and the broker evaluate it.

Facts a verifier supplies for a call: ``time(now)``, ``call(tool)`` and one
``arg(name, value)`` per top-level argument. JSON strings, integers, booleans and null are
the same Biscuit terms; objects and arrays are Datalog 3.3 maps and arrays. A number with
an integral value (``1234.0``, ``1.234e3``) is that integer; any other number that is not
a 64-bit integer becomes the string of the number as the broker prints it (serde_json's
shortest form, e.g. ``"1.5"``, ``"1e+300"``), so a numeric comparison against it fails
closed. The one policy is ``allow if call($t), tool($t)``: only the authority block's
``tool`` facts grant anything. A tool server keeps no counters, so budgets written as
``reject if token_calls($n), …`` never fire here: the broker counts.

Strings travel into Datalog as parameters, never as text, so no argument can inject
Datalog."""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import biscuit_auth as _b

#: Deepest nesting of arguments accepted (the broker's limit too).
MAX_DEPTH = 32
#: Most JSON values (scalars and containers, at any depth) in one call's arguments. The
#: authorizer's time limit does not cover loading the facts, whose cost grows faster than
#: linearly with the number of distinct strings (30,000 cost about 1.7 s here with the GIL
#: held); 10,000 bound it to about 0.2 s. The broker and the Rust SDK apply the same limit
#: (``leash_sdk::facts::MAX_VALUES``).
MAX_TERMS = 10_000
#: The check a tool server adds to accept only capabilities Leash forwarded: the called
#: tool must be named by a ``forwarded`` fact of a block signed by the forwarding key.
FORWARDED_CHECK = "check if forwarded($t), call($t) trusting {forwarding}"
_POLICY = "allow if call($t), tool($t);"
#: What biscuit-python raises (its classes share no base but ``Exception``).
BISCUIT_ERRORS: tuple[type[Exception], ...] = (
    _b.AuthorizationError,
    _b.BiscuitBlockError,
    _b.BiscuitBuildError,
    _b.BiscuitSerializationError,
    _b.BiscuitValidationError,
    _b.DataLogError,
)
#: A biscuit-python error, or a ``ValueError`` (a key callback's, a bad document's).
TOKEN_ERRORS: tuple[type[Exception], ...] = (ValueError, *BISCUIT_ERRORS)
#: ``TOKEN_ERRORS`` plus what reading a malformed JSON document raises.
DOCUMENT_ERRORS: tuple[type[Exception], ...] = (
    KeyError,
    TypeError,
    AttributeError,
    OverflowError,
    RecursionError,
    *TOKEN_ERRORS,
)
_I64 = 2**63
_U64 = 2**64


class ArgumentError(ValueError):
    """The arguments are not a JSON object the vocabulary can express."""


def limits() -> Any:
    """The authorizer's limits, the same as the broker's: 2,000 facts, 200 iterations,
    50 ms (hitting one denies)."""
    lim = _b.AuthorizerBuilder("").limits()  # type: ignore[attr-defined]  # missing in its stubs
    lim.max_facts = 2_000
    lim.max_iterations = 200
    lim.max_time = _dt.timedelta(milliseconds=50)
    return lim


def number_text(value: float) -> str:
    """``value`` as serde_json prints a float (its ``zmij`` formatter): ``1.5``,
    ``1e+300``, ``1.2345e-7``, ``0.000123``, ``1234567890123456.0``. Python's ``repr``
    finds the same shortest digits; only the layout differs: plain for a leading-digit
    exponent in -5..=15, else ``d.ddde±x`` with the exponent unpadded."""
    text = repr(value)
    sign = ""
    if text.startswith("-"):
        sign, text = "-", text[1:]
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    k = int(exponent or 0) - len(fraction)
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped or "0"
    length = len(digits)
    kk = length + k  # 10^(kk-1) <= value < 10^kk
    if k >= 0 and kk <= 16:
        out = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        out = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        out = "0." + "0" * -kk + digits
    else:
        point = f"{digits[0]}.{digits[1:]}" if length > 1 else digits
        out = f"{point}e{'+' if kk >= 1 else '-'}{abs(kk - 1)}"
    return sign + out


def value_count(arguments: Mapping[str, Any]) -> int:
    """How many JSON values the arguments hold (each argument's value, nested ones
    included), counting no further than ``MAX_TERMS + 1`` (as the Rust SDK's
    ``facts::value_count``)."""
    left = MAX_TERMS + 1
    stack = list(arguments.values())
    while stack and left > 0:
        value = stack.pop()
        left -= 1
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return MAX_TERMS + 1 - left


def _integral(value: float) -> int | None:
    if math.isfinite(value) and value == math.floor(value) and -_I64 <= value < _I64:
        return int(value)
    return None


class _Terms:
    """Builds Datalog text for JSON values; every string becomes a parameter."""

    def __init__(self, budget: list[int]) -> None:
        self.params: dict[str, Any] = {}
        #: Values left for the whole arguments object (shared by every argument).
        self.budget = budget

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return "{" + name + "}"

    def term(self, value: Any, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise ArgumentError(f"arguments nested deeper than {MAX_DEPTH}")
        self.budget[0] -= 1
        if self.budget[0] < 0:
            raise ArgumentError(f"arguments hold more than {MAX_TERMS} values")
        if value is None:
            return "null"
        if value is True:
            return "true"
        if value is False:
            return "false"
        if isinstance(value, str):
            return self.param(_checked_text(value))
        if isinstance(value, int):
            if -_I64 <= value < _I64:
                return str(value)
            if _I64 <= value < _U64:
                return self.param(str(value))  # serde_json keeps a u64 exact
            try:
                value = float(value)  # serde_json reads a larger literal as a float
            except OverflowError:
                raise ArgumentError("a number is out of range") from None
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ArgumentError("a number is out of range (JSON has no NaN or infinity)")
            whole = _integral(value)
            return str(whole) if whole is not None else self.param(number_text(value))
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(self.term(v, depth + 1) for v in value) + "]"
        if isinstance(value, Mapping):
            if not value:
                return self.param({})
            entries = []
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ArgumentError("object keys must be strings")
                entries.append(f"{self.param(_checked_text(key))}: {self.term(item, depth + 1)}")
            return "{" + ", ".join(entries) + "}"
        raise ArgumentError(f"{type(value).__name__} is not a JSON value")


def _checked_text(text: str) -> str:
    # A lone surrogate is not Unicode text; serde_json refuses it, so must we.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError("a string holds a lone surrogate") from None
    return text


def arg_facts(arguments: Mapping[str, Any]) -> list[Any]:
    """The ``arg(name, value)`` facts of an arguments object (biscuit-python ``Fact``s)."""
    if len(arguments) > MAX_TERMS:
        raise ArgumentError(f"arguments hold more than {MAX_TERMS} values")
    facts = []
    budget = [MAX_TERMS]
    for name, value in arguments.items():
        if not isinstance(name, str):
            raise ArgumentError("argument names must be strings")
        terms = _Terms(budget)
        source = f"arg({terms.param(_checked_text(name))}, {terms.term(value, 1)})"
        facts.append(_b.Fact(source, terms.params))
    return facts


def authorize(
    token: Any,
    tool: str,
    arguments: Mapping[str, Any],
    now: int,
    forwarding: Any | None = None,
) -> None:
    """Runs Leash's authorizer for one call of ``tool`` with ``arguments`` at ``now``
    (seconds since the epoch) on a verified ``biscuit_auth.Biscuit``. With ``forwarding``
    (the broker's forwarding ``PublicKey``) the call must also carry the broker's
    forwarded block for this tool. Raises ``biscuit_auth.AuthorizationError`` (or
    :class:`ArgumentError`) when refused."""
    source = "time({now}); call({tool}); " + _POLICY
    scopes: dict[str, Any] = {}
    if forwarding is not None:
        source += " " + FORWARDED_CHECK + ";"
        scopes["forwarding"] = forwarding
    when = _dt.datetime.fromtimestamp(max(now, 0), tz=_dt.timezone.utc)
    builder = _b.AuthorizerBuilder(source, {"now": when, "tool": tool}, scopes)
    builder.set_limits(limits())  # type: ignore[attr-defined]
    for fact in arg_facts(arguments):
        builder.add_fact(fact)
    builder.build(token).authorize()


def explain(error: Exception, tool: str) -> str:
    """Why an evaluation failed, in words (the failed checks, or the missing grant)."""
    text = str(error)
    if "no matching policy" in text and text.rstrip().endswith(":"):
        return f"the capability does not grant tool {tool!r}"
    return text.removeprefix("authorization failed: ")


def attenuate(token: str, checks: Sequence[str], root_keys: Mapping[int, Any]) -> str:
    """Narrows ``token`` offline: appends one block holding ``checks`` (each a
    ``check if …``, ``check all …`` or ``reject if …``). ``root_keys`` are the broker's
    public keys by key id (``/.well-known/leash/keys``; biscuit-python can only extend a
    token it has verified). No broker round trip; the result can only do less. Raises
    ``ValueError`` for a token or check that does not parse, and :class:`UnknownKey`
    when the token names a key id not in ``root_keys``."""
    if isinstance(checks, str):
        raise TypeError("checks must be a list of checks, not one string")
    text = token.strip()
    kid = root_key_id(text)
    if kid is None or kid not in root_keys:
        raise UnknownKey(f"the token's root key id {kid} is not among the broker's keys")
    try:
        parent = _b.Biscuit.from_base64(text, root_keys[kid])
    except BISCUIT_ERRORS as err:
        raise ValueError(f"not a valid Leash token: {err}") from None
    block = _b.BlockBuilder("")
    for source in checks:
        try:
            block.add_check(_b.Check(source))
        except BISCUIT_ERRORS as err:
            raise ValueError(f"{source!r} is not a check: {err}") from None
    return str(parent.append(block).to_base64())


class UnknownKey(ValueError):
    """A token signed by a root key id the caller does not know (yet)."""


def root_key_id(token: str) -> int | None:
    """The root key id a token names (read without verifying it)."""
    try:
        kid = _b.UnverifiedBiscuit.from_base64(token.strip()).root_key_id()
    except BISCUIT_ERRORS as err:
        raise ValueError(f"not a Biscuit token: {err}") from None
    return None if kid is None else int(kid)


def public_keys(document: Any) -> dict[int, Any]:
    """The root keys of a ``/.well-known/leash/keys`` document, by key id."""
    try:
        return {int(k["kid"]): _b.PublicKey(str(k["public_key"])) for k in document["keys"]}
    except DOCUMENT_ERRORS as err:
        raise ValueError(f"bad key document: {err}") from None


_TASK_FACT = re.compile(r'^task\("([^"\\]*)"\);$')


def task_id_of(token: str) -> str:
    """The task named by a token's authority block (read without verifying it: the broker
    verifies on every call). Raises ``ValueError`` for a token that names no task."""
    try:
        source = _b.UnverifiedBiscuit.from_base64(token.strip()).block_source(0)
    except BISCUIT_ERRORS as err:
        raise ValueError(f"not a Biscuit token: {err}") from None
    for line in str(source).splitlines():
        found = _TASK_FACT.match(line.strip())
        if found:
            return found.group(1)
    raise ValueError("the token names no task: is it a credential?")


def is_forwarded_by(token: Any, forwarding: Any) -> bool:
    """Whether some block of ``token`` (after the authority block) is signed by the
    forwarding key as a third party: a cheap look before the authorizer."""
    wanted = str(forwarding)
    return any(
        token.block_external_key(i) is not None and str(token.block_external_key(i)) == wanted
        for i in range(1, token.block_count())
    )


def principal(token: Any) -> tuple[str, str]:
    """``task`` and ``agent`` of the authority block (the authorizer's default scope, so
    attenuation blocks cannot change them). ``ValueError`` unless exactly one of each."""
    builder = _b.AuthorizerBuilder("")
    builder.set_limits(limits())  # type: ignore[attr-defined]
    authorizer = builder.build(token)

    def one(name: str) -> str:
        rows = authorizer.query(_b.Rule(f"found($x) <- {name}($x)"))
        values = [row.terms[0] for row in rows]
        if len(values) != 1 or not isinstance(values[0], str):
            raise ValueError(f"not a task capability (no single {name} fact)")
        return values[0]

    return one("task"), one("agent")
