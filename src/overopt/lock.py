"""One command per output directory, one process per run: exclusive locks on OUT and on each run.

Two `overopt run --out SAME` started a second apart used to both run, each appending its rows to the
same metrics.jsonl. Now `overopt run` and `overopt compare` hold OUT/.overopt.lock from before they
write anything into OUT (config.yaml, the checks of stale stages) until they end, and every run holds
OUT/runs/<name>/.seed<k>.lock while it trains (parallel workers and cluster jobs never train the same
run twice). A second process is refused at once, in one line that names the holder, and writes nothing:

    overopt: error: OUT is in use by pid 4242 on host node7 since 2026-12-01T10:00:03+00:00 (...)

(exit status 2). The holder is recorded in OUT/.overopt.lock.json while it holds the lock.

Why flock (filelock.FileLock) rather than a file that says "pid N holds this": the kernel drops a flock
the moment its holder dies, however it dies (SIGKILL, the OOM killer, preemption), so a lock left by a
killed process simply is not held any more and the next command takes it, with no guessing. A pid
check cannot be as sure: pids are reused, and a holder on another host cannot be asked. flock works
on local disks and on NFSv4 (where Linux maps it to server-side byte-range locks, released when the
client's lease lapses). The holder's record is only for the message; the flock alone decides.

Where the filesystem has no flock at all (it answers ENOSYS: Lustre mounted without `-o flock`, some
FUSE mounts), filelock falls back to its SoftFileLock: a marker created with O_EXCL that records pid,
host and the process's start time, taken over when that process is gone from this host; a holder on
another host cannot be checked from here, so the refusal then says which file to delete once that
process is gone. (A share mounted with `local_lock=flock` or `nolock` fakes flock per host: there,
two hosts are not kept apart; keep OUT on a local disk or a properly mounted share.)

Under `accelerate launch`, the processes of one launch share OUT: the main process takes the locks
and tells the others whether it got them (one broadcast), so a refused launch stops as a whole.
The workers of `overopt compare` read the shared stages of an OUT their parent holds: they take
only run locks.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from overopt import distributed
from overopt.errors import InUse
from overopt.io import atomic_write_text

LOCK_NAME = ".overopt.lock"
REFUSE_AFTER_S = 0.5  # how long a contender waits before it refuses (two commands started at once)


def out_lock(out: Path | str) -> contextlib.AbstractContextManager[None]:
    """Hold OUT for the duration of a command (`overopt run`, `overopt compare`); creates OUT if needed.

    Raises InUse (a ValueError: one line, exit status 2) while another process holds it, and ValueError
    naming --out if OUT cannot be created."""
    out = Path(out)

    def make_out() -> None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError, PermissionError) as err:  # a full disk stays an OSError
            why = "a file is in the way" if isinstance(err, FileExistsError) else err.strerror
            raise ValueError(f"--out {out}: cannot create the output directory ({why})") from None

    advice = "another overopt command writes there: wait for it to end, or choose another --out"
    return _exclusive(out / LOCK_NAME, str(out), advice, make_out)


def run_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Hold one run (OUT/runs/<name>/seed<k>) while it trains. The lock file sits beside the run's
    directory, which the run deletes when it starts afresh."""
    run_dir = Path(run_dir)
    advice = "another process is training this run"
    return _exclusive(
        run_dir.parent / f".{run_dir.name}.lock", str(run_dir), advice,
        lambda: run_dir.parent.mkdir(parents=True, exist_ok=True),
    )  # fmt: skip


@contextlib.contextmanager
def _exclusive(lock_path: Path, what: str, advice: str, make_dir: Callable[[], None]) -> Iterator[None]:
    if distributed.world() == 1:
        with _hold(lock_path, what, advice, make_dir):
            yield
        return
    # Several processes of one launch: the main one takes the lock, then all learn whether it did.
    with contextlib.ExitStack() as stack:
        refusal: Exception | None = None
        if distributed.is_main():
            try:
                stack.enter_context(_hold(lock_path, what, advice, make_dir))
            except Exception as err:  # InUse, an OUT that cannot be created, ...: the others must not wait
                refusal = err
        message = _from_main(None if refusal is None else str(refusal))
        if refusal is not None:
            raise refusal
        if message is not None:
            raise InUse(message)
        yield


def _from_main(message: str | None) -> str | None:
    import torch.distributed

    box = [message]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def _hold(lock_path: Path, what: str, advice: str, make_dir: Callable[[], None]) -> Iterator[None]:
    make_dir()
    lock = FileLock(lock_path, timeout=REFUSE_AFTER_S)
    record = _record_path(lock_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # filelock's one-time notice when it falls back to SoftFileLock
            lock.acquire()
    except Timeout:
        holder, gone = _holder(lock_path)
        raise InUse(f"{what} is in use by {holder} ({advice}{gone})") from None
    try:
        atomic_write_text(record, json.dumps(_me()) + "\n")
        yield
    finally:
        # The record goes before the lock, so a record found beside a free lock can only be a killed
        # holder's. The flock file stays (empty): deleting it while another process waits on it would let
        # two processes hold "the" lock, one on the deleted file and one on a new one.
        record.unlink(missing_ok=True)
        lock.release()


def _record_path(lock_path: Path) -> Path:
    return lock_path.with_name(f"{lock_path.name}.json")


def _me() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([_program(), *sys.argv[1:]]),
    }


def _program() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return "overopt" if name == "__main__.py" else name  # python -m overopt


def _holder(lock_path: Path) -> tuple[str, str]:
    """('pid N on host H since T', advice to add) from the holder's record. 'another process' if there
    is none to read (the holder has just taken the lock) or if it names a process of this host that is
    gone (a killed holder's record, read in the moment before the new holder replaces it)."""
    try:
        record = json.loads(_record_path(lock_path).read_text())
        pid, host, since = int(record["pid"]), str(record["host"]), str(record["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process", ""
    here = host == socket.gethostname()
    if here and not _alive(pid):
        return "another process", ""
    # Without flock (a soft marker in the lock file), a holder on another host cannot be checked from here.
    gone = f"; if that process is gone, delete {lock_path}" if not here and _soft_marker(lock_path) else ""
    return f"pid {pid} on host {host} since {since}", gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _soft_marker(lock_path: Path) -> bool:
    """True if the lock file holds filelock's SoftFileLock record (a flock file stays empty)."""
    try:
        return lock_path.stat().st_size > 0
    except OSError:
        return False
