"""Job claims: at most one live process works on a job directory at a time.

Two launches of the same sweep (or a relaunch while the first is still running) find the
same job directories. Before a job starts, its process creates ``<run_dir>/.claim`` with
``os.open(O_CREAT | O_EXCL)``, which is atomic on local file systems and on NFS (v3 and
later) and Lustre, where ``flock`` is often not available or not shared between hosts. The
file holds the claimant's host, pid, process start time, a random token and when it was
created; while the job runs, a daemon thread touches its mtime (the heartbeat) every
``timeout_s / 10`` seconds (at most 30 s). The claim is removed when the job ends, however
it ends, except when the process is killed outright (SIGKILL, a node failure).

A claim another process holds is either

- **live**: the job is skipped by this process (the caller decides what to do with it), or
- **stale**: its holder is gone. On the same host, in the same pid namespace, that is known
  at once: its pid no longer runs (or is a zombie, or now belongs to a process started
  later). On another host, or in another pid namespace of this one (a container sharing the
  host's name, ``docker run --network host``, whose pids mean other processes here), the
  heartbeat tells: stale when its mtime is older than ``timeout_s`` (the clocks of the hosts
  must agree to well within that).

A claim file this process cannot read (another user's, mode 600; a stale NFS handle; a
directory named ``.claim``) names no holder it could look up: it is judged by its heartbeat
(its mtime, or none when even that cannot be read), as another host's.

A stale claim is taken over: one process wins an exclusive ``.claim.takeover.<token>``
marker (again ``O_EXCL``), removes the stale claim if it still is the one judged stale, and
then competes with everyone else for a fresh ``.claim``. Exactly one process ends up holding
it.

A holder can outlive its claim: suspended (SIGSTOP, a paused VM) or cut off from the file
system for longer than the timeout, it is judged stale by another host, which takes the job
over. The heartbeat thread notices that the file no longer holds its token and marks the
claim **lost** (:attr:`Claim.lost`); the job stops at its next batch and writes nothing more
into the directory (no checkpoint, no results.json: :class:`ClaimLost`), which is the new
holder's now. Before each epoch's checkpoint and its final result the job reads the file
again (:meth:`Claim.verify`), so a loss the thread has not seen yet stops it too.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger("vaesweep.run.claims")

CLAIM_FILE = ".claim"
DEFAULT_TIMEOUT_S = 300.0
MAX_HEARTBEAT_S = 30.0
# A takeover (remove one file, create another) takes milliseconds; a marker older than this
# was left by a process that died in between.
TAKEOVER_MARKER_TIMEOUT_S = 60.0
# A claim file that names no holder (empty, partial or not JSON: its writer died between
# creating and writing it, which takes microseconds) is stale once it is this old.
UNREADABLE_GRACE_S = 5.0
# A claim of another host is stale once its heartbeat is older than the taker's timeout and
# than this many of the holder's own beats (a taker with a shorter timeout than the holder's
# never takes a live claim between two of its beats).
MISSED_BEATS = 3
HOST = socket.gethostname()


def _pid_namespace() -> str | None:
    """This process's pid namespace ("pid:[4026531836]", Linux), None where unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


#: Pids name processes within one pid namespace: a claim's pid is looked up here only when
#: it was written in this namespace (or either side does not know its namespace).
PID_NAMESPACE = _pid_namespace()

_held: set[str] = set()  # tokens of the claims this process holds


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), None if unknown.

    With the pid it identifies a process: a pid reused by a later process has another one.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (command) "
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed child that nobody has waited for yet still answers to kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return True


@dataclass
class ClaimInfo:
    """What a claim file says about its holder, and when it last heard from it."""

    path: Path
    host: str | None
    pid: int | None
    process_start: str | None
    token: str | None
    started_at: str | None
    heartbeat: float  # the file's mtime (seconds since the epoch)
    interval: float | None = None  # the holder's heartbeat interval (None: not recorded)
    pid_namespace: str | None = None  # the holder's pid namespace (None: not recorded)
    error: str | None = None  # why the file cannot be read (None: it was read)

    @property
    def identity(self) -> str:
        """The claim's token; for a claim file left empty, its mtime."""
        return self.token or f"m{int(self.heartbeat * 1e9)}"

    def age(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat."""
        return (time.time() if now is None else now) - self.heartbeat

    @property
    def readable(self) -> bool:
        """Whether the file names its holder (host and pid)."""
        return isinstance(self.host, str) and self.pid is not None

    @property
    def holder(self) -> str:
        """Who holds it, in a few words (``host:pid``)."""
        if self.error is not None:
            return f"a claim file that cannot be read: {self.error}"
        return f"{self.host}:{self.pid}" if self.readable else "a claim file naming no holder"

    def is_stale(self, timeout_s: float, now: float | None = None) -> bool:
        if self.error is not None:  # no holder to look up: its heartbeat tells, if anything
            return self.age(now) > timeout_s
        if not self.readable:  # a writer killed between creating the file and writing it
            return self.age(now) > min(timeout_s, UNREADABLE_GRACE_S)
        if self.host == HOST and self.pid is not None and self.pids_are_ours:
            if self.pid == os.getpid():
                return self.token not in _held  # a leftover of this process, not a live claim
            if not _pid_alive(self.pid):
                return True
            start = _process_start(self.pid)
            return None not in (start, self.process_start) and start != self.process_start
        # Another host (or pid namespace): its heartbeat tells, by the taker's timeout and
        # the holder's beats.
        return self.age(now) > max(timeout_s, MISSED_BEATS * (self.interval or 0.0))

    @property
    def pids_are_ours(self) -> bool:
        """Whether the claim's pid names a process of this pid namespace (assumed when
        either side does not know its namespace: an earlier version's claim, no /proc)."""
        return None in (self.pid_namespace, PID_NAMESPACE) or self.pid_namespace == PID_NAMESPACE

    def describe(self) -> str:
        if self.error is not None:
            when = f"modified {self.age():.0f} s ago" if self.heartbeat else "its age unknown"
            return (
                f"claimed by a claim file that cannot be read ({self.path}: {self.error}; "
                f"{when}); judged by its heartbeat, as another host's claim"
            )
        if not self.readable:
            return (
                f"claimed by a claim file that names no holder ({self.path}, written "
                f"{self.age():.0f} s ago: its writer may still be writing it, or died); it is "
                f"taken over once it is {UNREADABLE_GRACE_S:g} s old"
            )
        age = f"heartbeat {self.age():.0f} s ago"
        return f"held by {self.host}:{self.pid} since {self.started_at} ({age})"


class ClaimHeld(RuntimeError):
    """The job is claimed by another live process."""

    def __init__(self, holder: ClaimInfo) -> None:
        super().__init__(holder.describe())
        self.holder = holder


def claim_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CLAIM_FILE


def read_claim(run_dir: str | os.PathLike[str]) -> ClaimInfo | None:
    """The claim on ``run_dir``, or None when there is none. A claim file that cannot be
    read is a claim naming no holder, with the reason (:attr:`ClaimInfo.error`)."""
    path = claim_path(run_dir)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
            heartbeat = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    except OSError as error:  # another user's (mode 600), a stale NFS handle, a directory
        return _unreadable(path, error)
    try:
        data: dict[str, Any] = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):  # being written, or its writer died
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    host = data.get("host")
    interval = data.get("heartbeat_s")
    namespace = data.get("pid_namespace")
    return ClaimInfo(
        path=path,
        host=host if isinstance(host, str) else None,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        process_start=data.get("process_start"),
        token=data.get("token"),
        started_at=data.get("started_at"),
        heartbeat=heartbeat,
        interval=float(interval)
        if isinstance(interval, (int, float)) and not isinstance(interval, bool)
        else None,
        pid_namespace=namespace if isinstance(namespace, str) else None,
    )


def _unreadable(path: Path, error: OSError) -> ClaimInfo | None:
    """The claim file ``path`` that could not be opened (``error``): its heartbeat is its
    mtime (stat needs no read permission), 0 when even that cannot be read; None when it is
    gone."""
    try:
        heartbeat = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        heartbeat = 0.0
    reason = f"{type(error).__name__}: {error.strerror or error}"
    return ClaimInfo(path, None, None, None, None, None, heartbeat, error=reason)


def held_by_other(run_dir: str | os.PathLike[str], timeout_s: float) -> ClaimInfo | None:
    """The live claim another process holds on ``run_dir``, else None."""
    info = read_claim(run_dir)
    if info is None or info.token in _held or info.is_stale(timeout_s):
        return None
    return info


def heartbeat_interval(timeout_s: float) -> float:
    return min(MAX_HEARTBEAT_S, timeout_s / 10)


class ClaimLost(RuntimeError):
    """Another process took over this process's claim (it judged it stale): the job stops
    and leaves its directory to the new holder."""

    def __init__(self, run_dir: Path, holder: ClaimInfo | None) -> None:
        self.holder = holder
        now = "no process" if holder is None else holder.describe()
        super().__init__(
            f"the claim on {run_dir} was taken over while this process held it (its heartbeat "
            f"went unrenewed for longer than the claim timeout: suspended, or the file system "
            f"out of reach); it is now {now}. This process stopped the job and wrote nothing "
            "more into its directory"
        )


class ClaimLostByRank(ClaimLost):
    """A rank of a fit of several processes whose claim holder (rank 0) lost the claim:
    the ranks agreed to stop, and this one stops with it (it writes into no directory)."""

    def __init__(self) -> None:
        self.holder = None
        RuntimeError.__init__(
            self,
            "the job's claim was taken over by another launch while rank 0 held it; this "
            "rank stopped with rank 0 and wrote nothing",
        )


class Claim:
    """A claim this process holds; ``release()`` (or leaving its ``with`` block) gives it up.

    A daemon thread touches the claim file every ``interval`` seconds while it is held, and
    sets :attr:`lost` once the file names another holder (or none).
    """

    def __init__(self, path: Path, token: str, interval: float) -> None:
        self.path = path
        self.token = token
        self.interval = interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = threading.Thread(
            target=self._beat, name="vaesweep-claim", daemon=True
        )
        _held.add(token)
        self._thread.start()

    def __getstate__(self) -> dict[str, Any]:
        """A copy for another process (Lightning's ddp_spawn pickles the callbacks, this
        claim with them): the file, token and beat, without the heartbeat thread, which
        stays with the holder. The copy's :meth:`verify` reads the file as the holder's
        does."""
        return {"path": self.path, "token": self.token, "interval": self.interval}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.token, self.interval = state["path"], state["token"], state["interval"]
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = None  # no heartbeat here, and nothing to release: the holder's

    def _still_ours(self) -> bool:
        info = read_claim(self.path.parent)
        if info is not None and info.error is not None:  # says nothing about who holds it
            raise OSError(f"{info.path} cannot be read ({info.error})")
        return info is not None and info.token == self.token

    def verify(self) -> None:
        """Raises ClaimLost if the claim is lost, reading the file now (not only the
        heartbeat thread's last look)."""
        if not self.lost.is_set():
            try:
                if self._still_ours():
                    return
            except OSError:  # a file system hiccup says nothing about who holds it
                return
            self._mark_lost()
        raise ClaimLost(self.path.parent, self._holder_now())

    def _holder_now(self) -> ClaimInfo | None:
        try:
            return read_claim(self.path.parent)
        except OSError:
            return None

    def _mark_lost(self) -> None:
        if not self.lost.is_set():
            self.lost.set()
            holder = self._holder_now()
            log.error(
                "the claim on %s was taken over (%s): this process stops the job at its next "
                "batch and writes nothing more into its directory",
                self.path.parent,
                "no holder now" if holder is None else holder.describe(),
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self._still_ours():
                    self._mark_lost()
                    return
                os.utime(self.path)
            except OSError as e:  # a file system hiccup: try again at the next beat
                log.warning("could not renew the claim %s: %s", self.path, e)

    def release(self) -> None:
        if self.token not in _held or self._thread is None:  # not held, or a copy
            return
        self._stop.set()
        self._thread.join()
        if self._still_ours():
            self.path.unlink(missing_ok=True)
        _held.discard(self.token)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _create(path: Path, token: str, interval: float) -> bool:
    """Creates the claim file holding this process's identity and heartbeat interval
    (seconds); False if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    info = {
        "host": HOST,
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "token": token,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "heartbeat_s": interval,
        "pid_namespace": PID_NAMESPACE,
    }
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _remove_stale(stale: ClaimInfo) -> None:
    """Removes the claim file ``stale`` if no other process is doing so, and if it still is
    that claim (not a fresh one created after it was read)."""
    marker = stale.path.with_name(f"{CLAIM_FILE}.takeover.{stale.identity}")
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        try:
            if time.time() - marker.stat().st_mtime > TAKEOVER_MARKER_TIMEOUT_S:
                marker.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return
    try:
        current = read_claim(stale.path.parent)
        if current is not None and current.identity == stale.identity:
            stale.path.unlink(missing_ok=True)
            log.warning("took over the stale claim on %s (%s)", stale.path.parent, stale.describe())
    finally:
        marker.unlink(missing_ok=True)


def acquire(run_dir: str | os.PathLike[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> Claim:
    """Claims ``run_dir`` for this process, taking over a stale claim.

    Raises ClaimHeld when another live process holds it.
    """
    path = claim_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    interval = heartbeat_interval(timeout_s)
    for _ in range(20):
        if _create(path, token, interval):
            return Claim(path, token, interval)
        holder = read_claim(run_dir)
        if holder is None:  # released in the meantime
            continue
        if not holder.is_stale(timeout_s):
            raise ClaimHeld(holder)
        _remove_stale(holder)
        time.sleep(0.01)
    holder = read_claim(run_dir)
    if holder is None:
        raise RuntimeError(f"could not claim {run_dir}: too many processes competing for it")
    raise ClaimHeld(holder)  # another process is taking it over right now


def wait_for_others(
    run_dirs: list[Path],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 1.0,
    stop: Callable[[], bool] | None = None,
) -> bool:
    """Returns once no other live process holds a claim on any of ``run_dirs`` (False), or
    once ``stop()`` is true while one does (True: the caller stops waiting, a stop signal)."""
    announced = False
    while True:
        held = {d: info for d in run_dirs if (info := held_by_other(d, timeout_s))}
        if not held:
            return False
        if stop is not None and stop():
            return True
        if not announced:
            names = ", ".join(f"{d.name} ({i.holder})" for d, i in held.items())
            print(
                f"[vaesweep] waiting for {len(held)} job(s) that another launch is running: "
                f"{names}",
                flush=True,
            )
            announced = True
        time.sleep(poll_s)
