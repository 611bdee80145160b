"""ComfyUI's Cancel as the core's stop, in both directions; the one place the two meet.

ComfyUI's Cancel (the UI button, POST /interrupt) sets a flag; ComfyUI checks it in its
progress hook and (0.33) in every layer, raising ``InterruptProcessingException`` and clearing
the flag. The core knows one stop, ``textloc_core.stop.Cancelled``, and one poll, ``should_stop``.

* into the core: ``stop_requested`` is the ``should_stop`` nodes pass to the core;
  ``cancel_as_core`` wraps every ComfyUI call made on the core's behalf (model calls in
  ``comfy_backend``, the Train node's progress hook), so ComfyUI's interrupt arrives as
  ``Cancelled`` and the trainer keeps the steps done;
* back to ComfyUI: ``prompt_ends_on_stop`` wraps core work a node runs with ``stop_requested``
  (reading a concept folder, scoring), ending the prompt as interrupted when it stops;
  ``end_prompt_cancelled`` does so once the core has stopped (the trainer returns rather than
  raises), and ``end_if_cancelled`` between a node's own phases.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from ..textloc_core.stop import Cancelled


def stop_requested() -> bool:
    """True while ComfyUI's Cancel flag is set: the ``should_stop`` nodes give the core."""
    import comfy.model_management as mm

    return mm.processing_interrupted()


@contextmanager
def cancel_as_core(what: str) -> Iterator[None]:
    """Run a ComfyUI call for the core: ``Cancelled`` when Cancel was pressed before it, or when
    ComfyUI raises its interrupt inside it; ``what`` says where."""
    import comfy.model_management as mm

    if mm.processing_interrupted():
        raise Cancelled(f"cancelled before {what}")
    try:
        yield
    except mm.InterruptProcessingException:
        raise Cancelled(f"cancelled during {what}") from None


@contextmanager
def prompt_ends_on_stop() -> Iterator[None]:
    """Run core work given ``stop_requested``: its ``Cancelled`` ends the prompt as interrupted."""
    try:
        yield
    except Cancelled:
        end_prompt_cancelled()


def end_prompt_cancelled() -> NoReturn:
    """End the prompt as interrupted after the core stopped on a Cancel (flag cleared, as
    ComfyUI's own raise does, so the next prompt runs)."""
    import comfy.model_management as mm

    mm.interrupt_current_processing(False)
    raise mm.InterruptProcessingException()


def end_if_cancelled() -> None:
    """Between a node's phases: end the prompt as interrupted when Cancel was pressed."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()
