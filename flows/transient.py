"""Which failures are worth retrying: transient faults of the machine, never problems of the input.

A video that fails because of what it is (``Dv4dError`` and its subclasses, a ``ValueError`` from bad
data, missing model weights) fails the same way every time, so it is reported at once. A video that
fails because of where it ran (the GPU was out of memory because of another process, a network file
system returned EIO or timed out) may well succeed a little later, so the annotate task retries it with
exponential backoff. The decision is made on the exception's type name and message, because that is
what a failed video's manifest records (``error.type``, ``error.message``).
"""

import errno
import re
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

TRANSIENT_TYPES = frozenset(
    {"OutOfMemoryError", "TimeoutError", "ConnectionError", "ConnectionResetError", "BrokenPipeError"}
)
"""Exception type names that always mean a transient fault (``torch.cuda.OutOfMemoryError``, I/O
timeouts and dropped connections of network file systems)."""

TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.ESTALE,
        errno.ECONNRESET,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)
"""``OSError`` numbers of faults that pass (a full disk, a missing file or a permission problem do not)."""

TRANSIENT_MESSAGES = ("CUDA out of memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
"""Message fragments of a GPU memory shortage raised as a plain ``RuntimeError``."""

_ERRNO = re.compile(r"\[Errno (\d+)\]")


class TransientFault(Exception):
    """A video failed for a reason of the machine, not of the input; the task raises it to be retried."""


def is_transient(type_name: str, message: str) -> bool:
    """True when an error (its exception type name and message) is a transient fault worth a retry."""
    if type_name in TRANSIENT_TYPES:
        return True
    if type_name in ("RuntimeError", "AcceleratorError"):
        return any(fragment in message for fragment in TRANSIENT_MESSAGES)
    if type_name in ("OSError", "IOError"):
        match = _ERRNO.search(message)
        return match is not None and int(match.group(1)) in TRANSIENT_ERRNOS
    return False


def is_transient_exception(exc: BaseException) -> bool:
    """``is_transient`` for a raised exception (``TransientFault`` included)."""
    return isinstance(exc, TransientFault) or is_transient(type(exc).__name__, str(exc))


def retry_if_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only for a transient fault."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient_exception(exc)
