"""Small helpers shared by the tests: an approver acting in the background."""

from __future__ import annotations

import threading
import time
from typing import Any

from conftest import BrokerProcess


class Approver:
    """Approves (or denies) the first pending approval of ``kind`` for a task with this
    ``purpose``, from a background thread, while the SDK under test waits. (By purpose:
    other tests leave approvals of the same agent pending.)"""

    def __init__(
        self, broker: BrokerProcess, kind: str, purpose: str, decision: str = "approve"
    ) -> None:
        self.broker = broker
        self.credential = broker.approver()
        self.kind, self.purpose, self.decision = kind, purpose, decision
        self.decided: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Approver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=30)

    def _run(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pending = self.broker.as_approver(
                self.credential, "GET", "/v1/approvals?state=pending"
            )["approvals"]
            for approval in pending:
                if approval["kind"] == self.kind and approval["purpose"] == self.purpose:
                    time.sleep(0.3)  # the SDK is really waiting by now
                    path = f"/v1/approvals/{approval['approval_id']}/{self.decision}"
                    self.decided = self.broker.as_approver(self.credential, "POST", path, {})
                    return
            time.sleep(0.05)
