"""Concurrency measured by counting, not by clocks (imported inside Dask worker processes).

:func:`install` wraps a module function on a worker so that every call counts itself while it
runs; :func:`read` returns how many calls ran at most at once, and how many ran. Timestamps of
tasks are no measure of overlap on a busy machine (two tasks "overlap" by a few ms or not,
depending on load); a counter kept where the tasks run is exact.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

_cond = threading.Condition()
_state = {"running": 0, "most": 0, "calls": 0}
_originals: dict[tuple[str, str], Callable[..., Any]] = {}


def install(module: str, name: str, wait_for: int = 1, timeout: float = 120.0) -> None:
    """Count the calls of ``module.name`` in this process from now on (from zero again when
    called again, the function then wrapped anew).

    The first calls wait until ``wait_for`` calls are running at once (or ``timeout`` s have
    passed, after which they go on uncounted-for): so a worker that may run ``wait_for`` tasks
    at once does run them at once, however slow the machine is, and :func:`read` finds the
    limit itself. The timeout only bounds a test that is failing anyway; it decides nothing.
    """
    target = importlib.import_module(module)
    inner = _originals.setdefault((module, name), getattr(target, name))
    with _cond:
        _state.update(running=0, most=0, calls=0)

    def counted(*args: Any, **kwargs: Any) -> Any:
        with _cond:
            _state["running"] += 1
            _state["calls"] += 1
            _state["most"] = max(_state["most"], _state["running"])
            _cond.notify_all()
            _cond.wait_for(lambda: _state["most"] >= wait_for, timeout)
        try:
            return inner(*args, **kwargs)
        finally:
            with _cond:
                _state["running"] -= 1

    setattr(target, name, counted)


def read() -> tuple[int, int]:
    """``(most calls running at once, calls)`` since :func:`install`."""
    with _cond:
        return _state["most"], _state["calls"]
