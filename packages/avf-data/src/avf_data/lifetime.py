"""Child processes that end with the process they work for, even after its ``kill -9``.

Why: the children of a worker pool (curation workers forked by the local engine's fork server,
avf-train's DataLoader workers) wait on a queue for work. When the driver is killed with
SIGKILL nothing tells them, and each keeps its memory (models, decoded video: up to ~1.5 GB)
until something notices. :func:`exit_with`, called once at a child's start, arms two
mechanisms, and whichever is first ends the child:

* The kernel's parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``): the child is
  killed the moment its parent dies, whatever its GIL, threads or load. Caveat: the signal
  fires when the *thread* that forked the child ends, not the process. So it is armed only
  where that thread lives as long as its process: a multiprocessing fork server (one thread,
  which forks every child) or a ``fork`` from the parent's main thread; not for a ``spawn``ed
  child, whose forking thread is unknown.
* A watcher thread on the owner process (which need not be the parent: the driver behind the
  fork server). It waits on a pidfd, which wakes when the owner exits, zombie or not; where
  there is no pidfd it polls every 0.2 s and counts a zombie as gone.

A fork server exits when its "alive" pipe closes: the driver holds one end and every child
it forked gets a copy, so the server only notices once the children are gone. Its exit then
ran Python's whole shutdown (torch's module teardown: 3.8-6.7 s on a loaded 2-core machine);
:func:`fork_server_exits_fast`, run by a preloaded module (:mod:`avf_data.fork_server`), ends it
with ``os._exit`` instead, it having nothing to flush or clean up.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 0.2


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when the thread that forked it ends
    (see the module doc for why that is a thread). False where the OS has no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return False


def _cmdline(pid: int | str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def parent_thread_lives_with_its_process() -> bool:
    """Whether the thread that forked this process ends only with its process, so that a
    parent-death signal means the parent *process* died: true for a child of a
    multiprocessing fork server, and for a child forked by its parent's main thread (after a
    fork Python keeps the forking thread as the child's main thread, and it is a
    ``_MainThread`` only if it was the parent's main thread). A ``spawn``ed child cannot tell."""
    if b"multiprocessing.forkserver" in _cmdline(os.getppid()):
        return True
    if b"--multiprocessing-fork" in _cmdline("self"):  # spawn: a fresh interpreter
        return False
    return isinstance(threading.main_thread(), threading._MainThread)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie, not yet reaped by its parent, has too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # the pid was reused by another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _watch(pid: int, pidfd: int | None) -> None:
    """Exit this process as soon as process ``pid`` has ended."""
    if pidfd is not None:
        import select

        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll(None):  # readable once the process has exited (zombie included)
            pass
        os._exit(0)
    while not _gone(pid):
        time.sleep(POLL_SECONDS)
    os._exit(0)


def watch_owner(owner: int) -> None:
    """Start a daemon thread that ends this process when ``owner`` ends (pidfd where the OS
    has one, so that a reused pid cannot fool it). Exits at once if ``owner`` is gone already."""
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(owner)
        except ProcessLookupError:  # the owner died while this process was starting
            os._exit(0)
        except OSError:
            pidfd = None
    if pidfd is None and _gone(owner):
        os._exit(0)
    threading.Thread(target=_watch, args=(owner, pidfd), daemon=True, name="avf-watch-owner").start()


def exit_with(owner: int) -> bool:
    """Call first thing in a worker process: end it (SIGKILL / ``os._exit``) when ``owner``, the
    process it works for, ends. Arms the parent-death signal where it is reliable (see
    :func:`parent_thread_lives_with_its_process`) and always watches ``owner``. Returns whether
    the parent-death signal was armed."""
    if owner == os.getpid():  # inline: nothing to outlive
        return False
    parent = os.getppid()
    armed = parent_thread_lives_with_its_process() and set_parent_death_signal(signal.SIGKILL)
    if armed and os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(0)
    watch_owner(owner)
    return armed


def fork_server_exits_fast() -> bool:
    """In a multiprocessing fork server (nowhere else): skip the interpreter's shutdown at exit.
    The server exits once the driver and its children are gone and has nothing to flush;
    a handler registered last runs first. Returns whether this process is a fork server."""
    if b"multiprocessing.forkserver" not in _cmdline("self"):
        return False
    atexit.register(os._exit, 0)
    return True
