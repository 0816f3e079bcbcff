"""The memory allocator of the processes that run the model: jemalloc where the machine has it.

With glibc's malloc, every large activation of a forward pass is ``mmap``-ed and unmapped again
on every call (millions of page faults, a third of the CPU time in the kernel); jemalloc keeps
and reuses them, and smp models run 1.2–2.2 × faster on CPU. Where a node has no jemalloc,
glibc is told to do the same (:data:`GLIBC_TUNING`: no ``mmap`` for large blocks, one arena).
An allocator is chosen when a process starts (``LD_PRELOAD``, ``MALLOC_*``), so geoseg sets it
for the processes it starts:

* **Dask workers**: :func:`dask_setup` is a nanny preload. Before the nanny spawns its worker
  process it puts ``LD_PRELOAD`` and ``MALLOC_CONF`` into the nanny's pre-spawn environment,
  looking for the library on the node where the nanny runs. geoseg's local clusters and
  Slurm/PBS worker jobs load it themselves; start other workers with
  ``dask worker … --preload-nanny geoseg.allocator``. The choice travels in the nanny's
  environment as ``GEOSEG_ALLOCATOR`` (``auto`` when unset).
* **The command's own process**, when the model runs in it (``scheduler: synchronous``): the
  CLI re-executes itself once with :func:`reexec_environ`.

Choices (:data:`ALLOCATORS`): ``jemalloc`` (required), ``glibc`` (tuned glibc), ``auto``
(jemalloc where the node has it, else tuned glibc) and ``system`` (whatever the environment
gives, untouched). Only Linux has ``LD_PRELOAD``; elsewhere jemalloc is never found.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from geoseg.errors import ConfigError

__all__ = [
    "ALLOCATORS",
    "ENV_CHOICE",
    "GLIBC_TUNING",
    "MALLOC_CONF",
    "REEXEC_GUARD",
    "Allocator",
    "allocator_environ",
    "allocator_in_use",
    "dask_setup",
    "find_jemalloc",
    "preloaded_jemalloc",
    "reexec_environ",
    "release_free_memory",
    "resolve_allocator",
]

log = logging.getLogger(__name__)

Allocator = Literal["auto", "jemalloc", "glibc", "system"]
ALLOCATORS: tuple[Allocator, ...] = ("auto", "jemalloc", "glibc", "system")

#: jemalloc options: never give freed pages back (the next forward pass needs them again).
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
#: glibc malloc told to keep its large blocks: never ``mmap`` (so never ``munmap``) them, and one
#: arena for every thread (a Dask task thread's arena could not grow past 64 MiB without
#: ``mmap``, and one arena fragments less). U-Net/ResNet-34 on a 1-worker local cluster, 2 cores,
#: 3072² scene: glibc 37–44 s, worker peak 1632 MiB; tuned 26.1 s, 1781 MiB; jemalloc 22.2 s,
#: 1930 MiB. ``MALLOC_MMAP_MAX_=0`` alone: 26.6 s but 2384 MiB (an arena per thread). Values a
#: process's environment already has are kept.
GLIBC_TUNING: dict[str, str] = {"MALLOC_MMAP_MAX_": "0", "MALLOC_ARENA_MAX": "1"}
#: The shared library of jemalloc 5 (Debian/Ubuntu ``libjemalloc2``, RHEL/Fedora ``jemalloc``).
SONAME = "libjemalloc.so.2"
#: Environment variable carrying the choice to a nanny (and to worker jobs), one of ALLOCATORS.
ENV_CHOICE = "GEOSEG_ALLOCATOR"
#: Set in the environment of a re-executed command, so it never re-executes again.
REEXEC_GUARD = "GEOSEG_ALLOCATOR_REEXEC"


def _library_dirs() -> list[Path]:
    """Where distributions install shared libraries, most specific first."""
    arch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    prefixes = dict.fromkeys([sys.prefix, sys.base_prefix])  # conda-forge's jemalloc, a venv
    return [
        Path("/usr/lib") / arch,  # Debian, Ubuntu
        Path("/usr/lib64"),  # RHEL, Fedora, SUSE
        Path("/usr/lib"),  # Arch, Alpine
        Path("/usr/local/lib"),  # built from source
        *(Path(p) / "lib" for p in prefixes),
    ]


def find_jemalloc() -> str | None:
    """The jemalloc library to preload on this machine, or None.

    A path from the usual library folders, else the name the dynamic loader knows
    (``ctypes.util.find_library``, i.e. the ``ldconfig`` cache), which ``LD_PRELOAD`` resolves
    the same way. Always None off Linux.
    """
    if not sys.platform.startswith("linux"):
        return None
    for folder in _library_dirs():
        path = folder / SONAME
        if path.is_file():
            return str(path)
    return ctypes.util.find_library("jemalloc")


def preloaded_jemalloc() -> str | None:
    """Path of the jemalloc library mapped into this process (``/proc/self/maps``), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "jemalloc" in Path(parts[5]).name:
            return parts[5]
    return None


#: ``mallctl`` name purging every jemalloc arena (``MALLCTL_ARENAS_ALL`` is 4096 in jemalloc 5).
_PURGE_ALL = b"arena.4096.purge"


def release_free_memory() -> str:
    """Give the pages this process's allocator keeps for reuse back to the system.

    jemalloc as geoseg sets it up never returns freed pages by itself, and Python's
    small-object arenas (``mmap``-ed directly) cannot reuse them. A worker that vectorizes
    after predicting would stack its polygons on top of the forward passes' high-water mark;
    :func:`geoseg.vectorize.vectorize_mask` calls this on every worker first.

    Returns:
        what was released: ``"jemalloc"`` (every arena purged), ``"glibc"`` (``malloc_trim``)
        or ``"none"``.
    """
    library = preloaded_jemalloc()
    if library:
        try:
            mallctl = ctypes.CDLL(library).mallctl
        except (OSError, AttributeError):  # a jemalloc without the unprefixed API
            mallctl = None
        if mallctl is not None:
            mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_size_t]
            mallctl.restype = ctypes.c_int
            if mallctl(_PURGE_ALL, None, None, None, 0) == 0:
                return "jemalloc"
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return "none"
    return "glibc"


def allocator_in_use(environ: Mapping[str, str] | None = None) -> str:
    """What allocates in this process: the jemalloc library's path, ``glibc (tuned)`` (the
    :data:`GLIBC_TUNING` variables were in its environment ``environ``, default
    ``os.environ``, when it started) or ``system``."""
    environ = os.environ if environ is None else environ
    library = preloaded_jemalloc()
    if library:
        return library
    if all(environ.get(name) == value for name, value in GLIBC_TUNING.items()):
        return "glibc (tuned)"
    return "system"


def resolve_allocator(choice: str) -> str | None:
    """The library to preload for ``choice`` (None: glibc, tuned or not).

    Raises:
        ConfigError: ``jemalloc`` was asked for and this machine has none, or ``choice`` is
            not one of :data:`ALLOCATORS`.
    """
    if choice not in ALLOCATORS:
        raise ConfigError(
            f"allocator {choice!r}: choose one of {', '.join(ALLOCATORS)} "
            f"(from cluster.allocator, --allocator or ${ENV_CHOICE})"
        )
    if choice in ("system", "glibc"):
        return None
    library = find_jemalloc()
    if library is None and choice == "jemalloc":
        raise ConfigError(
            f"allocator jemalloc: {SONAME} was not found on {os.uname().nodename} (looked in "
            f"{', '.join(map(str, _library_dirs()))} and the ldconfig cache); install it "
            "(Debian/Ubuntu: apt-get install libjemalloc2; RHEL/Fedora: dnf install jemalloc; "
            "conda: conda install -c conda-forge jemalloc) or set cluster.allocator to auto"
        )
    return library


def _split_preload(value: str) -> list[str]:
    # ld.so separates LD_PRELOAD entries by colons or spaces
    return [p for p in value.replace(":", " ").split() if p]


def allocator_environ(choice: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``LD_PRELOAD`` (and ``MALLOC_CONF``, or :data:`GLIBC_TUNING`'s variables) that give a new
    process ``choice``'s allocator.

    Other preloaded libraries in ``environ`` (default ``os.environ``) are kept; any jemalloc
    entry is removed first, so ``system`` and ``glibc`` really mean glibc even in a process
    whose environment has jemalloc in it. ``glibc``, and ``auto`` without jemalloc, add
    :data:`GLIBC_TUNING`. A ``MALLOC_CONF`` or ``MALLOC_*`` value already set is kept.

    Raises:
        ConfigError: see :func:`resolve_allocator`.
    """
    environ = os.environ if environ is None else environ
    library = resolve_allocator(choice)
    keep = [p for p in _split_preload(environ.get("LD_PRELOAD", "")) if "jemalloc" not in p]
    env = {"LD_PRELOAD": ":".join([library, *keep] if library else keep)}
    if library:
        env["MALLOC_CONF"] = environ.get("MALLOC_CONF") or MALLOC_CONF
    elif choice != "system":
        env.update({name: environ.get(name) or value for name, value in GLIBC_TUNING.items()})
    return env


def reexec_environ(choice: str, environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The full environment to re-execute this process with under ``choice``'s allocator, or
    None.

    None for ``system``, when jemalloc is already loaded here, when glibc is to be tuned and
    already is, or when this process is itself a re-execution (:data:`REEXEC_GUARD`), so it can
    never loop.

    Raises:
        ConfigError: see :func:`resolve_allocator`.
    """
    environ = os.environ if environ is None else environ
    if environ.get(REEXEC_GUARD) or preloaded_jemalloc() is not None or choice == "system":
        return None
    env = allocator_environ(choice, environ)
    if "MALLOC_CONF" not in env and all(environ.get(k) == env[k] for k in GLIBC_TUNING):
        return None  # glibc, tuned already
    return {**environ, **env, REEXEC_GUARD: "1"}


def dask_setup(nanny: Any) -> None:
    """Nanny preload: the worker process this nanny spawns (and respawns) gets the allocator.

    The choice is ``GEOSEG_ALLOCATOR`` from the nanny's ``env`` or this process's environment
    (``auto`` when unset); the library is looked for on this node.

    Raises:
        ConfigError: ``jemalloc`` asked for and missing here (the nanny does not start).
    """
    if not hasattr(nanny, "pre_spawn_env"):
        log.warning("geoseg.allocator is a nanny preload (--preload-nanny); ignored on %r", nanny)
        return
    choice = nanny.env.get(ENV_CHOICE) or os.environ.get(ENV_CHOICE) or "auto"
    env = allocator_environ(choice)
    nanny.pre_spawn_env.update(env)
    nanny.env.update(env)
    log.info("worker allocator %s: %s", choice, " ".join(f"{k}={v}" for k, v in env.items()))
