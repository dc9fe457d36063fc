"""Leash SDK for Python.

Agents open task-bound capabilities and call tools through the broker
(:class:`Broker`/:class:`Task`, or :class:`AsyncBroker`/:class:`AsyncTask`); tool servers
verify capabilities offline (:class:`Verifier`, :class:`leash.asgi.RequireCapability`).
Every failure is a :class:`LeashError` with ``status``, ``code`` and ``message``."""

from ._flows import APPROVAL_HEADER, CAPABILITY_HEADER, ToolInfo
from .agent import Broker, Task
from .aio import AsyncBroker, AsyncTask
from .capability import attenuate
from .errors import ApprovalTimeout, CapabilityRefused, LeashError, TaskNotActivated
from .verifier import VerifiedCapability, Verifier

__all__ = [
    "APPROVAL_HEADER",
    "CAPABILITY_HEADER",
    "ApprovalTimeout",
    "AsyncBroker",
    "AsyncTask",
    "Broker",
    "CapabilityRefused",
    "LeashError",
    "Task",
    "TaskNotActivated",
    "ToolInfo",
    "VerifiedCapability",
    "Verifier",
    "attenuate",
]
