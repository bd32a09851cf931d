"""What the actors' task groups share: finding the failure behind a cancelled group."""

from __future__ import annotations

import anyio


def first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a task group that is not the cancellation it caused.

    When one task of a group fails, the group cancels the others; their cancellations
    come back beside the real failure, which is the one worth reporting.
    """
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_cause(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group
