"""Every error processhub raises, one named class each, under one base class."""
from __future__ import annotations


class ProcessHubError(Exception):
    """Base class of every processhub error."""


class CallTimeout(ProcessHubError, TimeoutError):
    """A call got no reply within its timeout (the message may or may not have been handled)."""


class ProcessCrashed(ProcessHubError):
    """The handler raised; carries the remote exception type name and traceback text."""

    def __init__(self, message: str, exc_type: str = "", remote_traceback: str = "") -> None:
        # All three in args, so pickling and Celery's JSON exception results keep them.
        super().__init__(message, exc_type, remote_traceback)
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        base = str(self.args[0]) if self.args else ""
        if self.remote_traceback:
            return f"{base}\n--- remote traceback ---\n{self.remote_traceback}"
        return base


class NoLiveNodes(ProcessHubError):
    """No node holds a valid lease, so nothing can be started or reached."""


class HubAtCapacity(ProcessHubError):
    """Every live node that could run the process already runs MAX_PROCESSES_PER_NODE processes."""


class IncompatibleWireVersion(ProcessHubError):
    """The process runs on a node that speaks another wire format (a rolling deploy across versions)."""


class UnknownProcessClass(ProcessHubError, LookupError):
    """A class label that is not registered (only registered HordeProcess classes can run)."""


class InvalidArgument(ProcessHubError, ValueError):
    """A start argument or process id that cannot be used (not serializable, bad id)."""


class InvalidMessage(InvalidArgument):
    """A message that is not serializable, too large, or malformed on the wire."""


class StartManyFailed(ProcessHubError):
    """A ``start_many(..., on_failure="rollback")`` met errors; every process it created was stopped again.

    ``errors`` maps each failed id to its ``ProcessHubError``.
    """

    def __init__(self, errors: dict) -> None:
        first = next(iter(errors.items()), ("", ""))
        super().__init__(f"{len(errors)} of the starts failed (e.g. {first[0]}: {first[1]!r}); rolled back", errors)
        self.errors = errors


class ProcessNotRunning(ProcessHubError):
    """The process stopped or failed and will not run unless started again."""


class ProcessUnavailable(ProcessHubError):
    """The process is registered but its node cannot be reached right now (failover in progress)."""


class TransportUnavailable(ProcessHubError):
    """The message transport (Redis) cannot be reached."""


class DatabaseUnavailable(ProcessHubError):
    """The registry database cannot be reached."""


class Fenced(ProcessHubError):
    """This activation no longer owns its epoch (lease lost or taken over); the write was refused."""


class SyncCallFromAsyncContext(ProcessHubError, RuntimeError):
    """A sync client call was made from a running event loop; use the async twin (acall, astart...)."""
