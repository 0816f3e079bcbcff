"""Terminal rendering shared by the commands (rich lives here, never in the library)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: geoseg's console (stderr). No emoji codes: a class or file named ``:smile:`` prints as written.
console = Console(stderr=True, emoji=False)


def new_progress(unit: str = "") -> Progress:
    """geoseg's progress display (description, bar, done/total [unit], elapsed, ETA) on the
    console; disabled when the console is not a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar driven by ``advance(done, total)``; silent when not a terminal."""
    with new_progress("blocks") as progress:
        task = progress.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield advance


def _unsafe_chars(newlines: bool) -> dict[int, str]:
    """``str.translate`` table: C0 controls (not tab), DEL, C1 controls, Unicode line
    separators and bidirectional overrides → their visible escapes (``\\x1b``, ``\\u202e``)."""
    codes = [*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0), 0x200E, 0x200F,
             *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]
    return {c: chr(c).encode("unicode_escape").decode("ascii") for c in codes
            if not (newlines and c == 0x0A)}


_UNSAFE = {False: _unsafe_chars(False), True: _unsafe_chars(True)}


def terminal_safe(text: object, *, newlines: bool = False) -> str:
    """A user-supplied string (file name, class name, description…) ready to put in rich markup.

    Control characters are shown as escapes (ESC → ``\\x1b``: no CSI colours, OSC 8 links, BEL,
    cursor moves or carriage returns reach the terminal; bidi overrides cannot reorder text),
    then markup is escaped (``[bold]`` prints as written). Tabs stay; line breaks stay only
    with ``newlines`` (multi-line descriptions), else they print as ``\\n``.

    Example: ``console.print(f"[bold]{terminal_safe(path)}[/]")``.
    """
    from rich.markup import escape

    return escape(str(text).translate(_UNSAFE[newlines]))


def counted(n: int, noun: str) -> str:
    """``1 scene``, ``2 scenes``, ``0 scenes``: a count with its noun, in English plural."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
