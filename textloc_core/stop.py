"""What a stop is: the one exception a host's Cancel becomes, and the one check that raises it.

Every long phase (reading photos, VAE encoding, prior generation, calibration, training
steps, sampling, scoring) calls ``check_stop`` with the host's ``should_stop``; a backend whose host stops
from inside a model call (ComfyUI checks its Cancel flag in every layer) raises
``Cancelled`` itself. Only ``training.loop`` turns a ``Cancelled`` into a stopped run (the
steps done are kept); everywhere else it propagates to the caller.

It is the lowest module of the core (below ``data``): the concept readers poll it per photo,
and the backends and the sampler, below training in the import order, raise it too.
"""

from __future__ import annotations

from collections.abc import Callable

StopCheck = Callable[[], bool]
"""A host's "should I stop now?" poll; None where the host never stops a run."""


class Cancelled(Exception):
    """The host asked to stop; the message says where the work was when it stopped."""


def check_stop(should_stop: StopCheck | None, what: str) -> None:
    """Raise ``Cancelled`` when ``should_stop`` (None: never) says stop; ``what`` says where."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"cancelled {what}")
