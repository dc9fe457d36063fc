"""Every failure the SDK reports is a :class:`LeashError` with an HTTP-like status and a
stable code: the broker's own codes (DESIGN.md) when it refused, and a few SDK codes when
the broker could not be reached or never decided."""

from __future__ import annotations

#: SDK codes for failures that are not a broker refusal.
UNREACHABLE = "unreachable"
BAD_ANSWER = "bad_answer"
APPROVAL_TIMEOUT = "approval_timeout"
NOT_ACTIVATED = "not_activated"
BAD_TOKEN = "bad_token"  # noqa: S105 - an error code, not a secret


class LeashError(Exception):
    """A refusal or failure: ``status`` (the HTTP status, 0 when no answer came), ``code``
    (match on this: ``capability_denied``, ``token_revoked``, …) and ``message`` (the
    broker's words: the failed check, the schema violations, …). Never holds a secret."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        violations: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: For ``invalid_arguments``: one ``{"pointer", "message"}`` per schema violation.
        self.violations = violations or []

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status}, code={self.code!r}, message={self.message!r})"


class ApprovalTimeout(LeashError):
    """No approver decided within the approval timeout; ``approval_id`` is still pending."""

    def __init__(self, approval_id: str) -> None:
        super().__init__(0, APPROVAL_TIMEOUT, f"approval {approval_id} was not decided in time")
        self.approval_id = approval_id


class TaskNotActivated(LeashError):
    """The task was denied, or its approval expired, instead of becoming active."""

    def __init__(self, task_id: str, state: str) -> None:
        super().__init__(0, NOT_ACTIVATED, f"task {task_id} was not activated: it is {state}")
        self.task_id = task_id
        self.state = state


class CapabilityRefused(LeashError):
    """A tool server's :class:`leash.Verifier` refused a capability. ``status`` is what the
    tool server should answer: 401 (missing, invalid, revoked), 403 (its checks refuse the
    call, or it was not forwarded by Leash) or 503 (the revocation view is stale)."""
