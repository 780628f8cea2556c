"""Exceptions, one per status code of the C ABI (ringrun.h's ``ringrun_status_t``)."""


class RingrunError(Exception):
    """Any failed ringrun call. ``status`` is the C status code."""

    status = -1

    def __init__(self, message="", status=None):
        super().__init__(message)
        if status is not None:
            self.status = status


class MembershipChanged(RingrunError):
    """The group changed before or during the call: restore the last commit and redo the
    work since (``ringrun.elastic.run`` does this)."""

    status = 1


class PeerLost(MembershipChanged):
    """A peer's link broke during the call (a kind of membership change)."""

    status = 2


class Timeout(RingrunError):
    """A collective missed its deadline with no member found missing; recover as for
    MembershipChanged."""

    status = 3


class InvalidArgument(RingrunError, ValueError):
    """An unusable argument; nothing was sent."""

    status = 4


class NotInitialized(RingrunError):
    """``ringrun.init()`` has not been called (or ``finalize()`` was)."""

    status = 5


class InternalError(RingrunError):
    """The library or the group failed; not recoverable in-process."""

    status = 6


class Mismatch(RingrunError):
    """Ranks disagreed about a call (size, dtype, op, root, committed state). A bug in the
    caller; the group re-forms at the next restore."""

    status = 7


class NoQuorum(RingrunError):
    """No epoch could be formed in time (too few members)."""

    status = 8


class JobCompleted(RingrunError, SystemExit):
    """The job completed without this process: its members finished it (``ringrun.finish``)
    and left, and no final state reached this process (a restart that came too late). Nothing
    changed and there is nothing left to train. It is also a ``SystemExit`` with code 0: left
    uncaught, the process ends with status 0, which the launcher counts as finished."""

    status = 9

    def __init__(self, message="", status=None):
        RingrunError.__init__(self, message, status)
        self.code = 0


BY_STATUS = {
    c.status: c
    for c in (
        MembershipChanged,
        PeerLost,
        Timeout,
        InvalidArgument,
        NotInitialized,
        InternalError,
        Mismatch,
        NoQuorum,
        JobCompleted,
    )
}

#: The errors after which restoring the last commit and retrying may succeed.
RECOVERABLE = (MembershipChanged, Timeout)
