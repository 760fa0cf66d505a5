"""Checkpoints and other run files: atomic writes and safe loads."""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not a kdcore checkpoint."""


#: The process umask, read once (reading it means setting it, which is not thread-safe at write time).
_UMASK = os.umask(0)
os.umask(_UMASK)


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` and :func:`atomic_copy` leave in ``folder``
    when the process is killed in the middle of a write (``.<name>.<random>.tmp``); return them. Only
    for a folder that nothing else is writing to, such as a run being resumed."""
    partial = sorted(Path(folder).glob(".*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that readers see the old content or the complete new one, never a torn file.

    ``write(fh)`` fills a temporary file in the same directory, which is flushed, fsynced and renamed over
    ``path``. If ``write`` raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes the file private; give it a normal file's mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_directory(root: str | os.PathLike) -> Iterator[Path]:
    """Build a directory tree all at once: yield a staging folder that becomes ``root`` on success.

    ``root`` must not exist or be an empty directory (else :class:`FileExistsError` naming it, and
    nothing is touched). The staging folder is a sibling of ``root`` made with the process umask; if the
    ``with`` body raises (Ctrl-C included) it is removed, so an interrupted export leaves nothing behind.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} already exists and is not an empty directory; choose another path")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
    staging.mkdir()
    try:
        yield staging
        if root.exists():  # empty (checked above); rename() cannot replace a directory everywhere
            root.rmdir()
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make ``path`` hold what ``source`` holds now, atomically: a hard link when the file system allows
    (no bytes copied; a later atomic replacement of ``source`` leaves ``path`` as it was), else a copy."""
    source, path = Path(source), Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_once(
    root: str | os.PathLike, write: Callable[[Path], None], complete: Callable[[Path], bool], what: str
) -> Path:
    """A generated data set folder, written at most once and never half: how plugins write their
    embedded defaults under ``data_home()``.

    ``root`` is returned untouched when ``complete(root)`` says it already holds the set. Otherwise
    ``write(staging)`` fills a sibling staging folder, renamed to ``root`` at the end; when another
    process published a complete ``root`` meanwhile, that one is kept. An interruption leaves no staging
    folder and no partial ``root``.

    Raises:
        FileExistsError: ``root`` exists and is neither complete nor an empty folder; the message says
            it is not ``what`` (e.g. "a complete synthetic set written with these arguments"). Nothing
            is touched.
    """
    root = Path(root)
    if root.exists() or root.is_symlink():
        if complete(root):
            return root
        if not root.is_dir() or any(root.iterdir()):
            raise FileExistsError(
                f"{root} already exists and is not an empty folder or {what}; refusing to overwrite it "
                "(choose another folder or remove it)"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
    staging.mkdir()  # with the process umask, like any folder
    try:
        write(staging)
        try:
            os.replace(staging, root)  # root is missing or an empty folder
        except OSError:
            if not complete(root):  # another process may have written the same set meanwhile
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Atomically save a checkpoint dict (tensors, numbers, strings, lists and dicts only).

    A ``format`` key is added so future versions can migrate old files.
    """
    import torch

    data = {"format": CHECKPOINT_FORMAT, **payload}
    return atomic_write(path, lambda fh: torch.save(data, fh))


def snapshot(payload: Any) -> Any:
    """A copy of a checkpoint payload that later training cannot change: every tensor copied to the CPU
    (detached), every dict, list and tuple rebuilt, other mutable values deep-copied. What a
    :class:`BackgroundWriter` job saves while the next epoch trains.

    CUDA tensors are copied without waiting, into pinned memory, and the host waits once for all of them
    at the end: one sync per snapshot, not one per tensor."""
    streams: set[torch.cuda.Stream] = set()
    copied = _snapshot(payload, streams)
    for stream in streams:
        stream.synchronize()
    return copied


def _snapshot(payload: Any, streams: set) -> Any:
    import torch

    if isinstance(payload, torch.Tensor):
        if payload.is_cuda:
            streams.add(torch.cuda.current_stream(payload.device))
            return payload.detach().to("cpu", copy=True, non_blocking=True)
        return payload.detach().to("cpu", copy=True)
    if isinstance(payload, Mapping):
        return {key: _snapshot(value, streams) for key, value in payload.items()}
    if isinstance(payload, list | tuple):
        if _IMMUTABLE.issuperset(map(type, payload)):  # a random generator's 625 ints, say
            return type(payload)(payload)
        return type(payload)(_snapshot(value, streams) for value in payload)
    if payload is None or isinstance(payload, bool | int | float | str | bytes):
        return payload
    return copy.deepcopy(payload)


#: Types whose values :func:`snapshot` shares instead of copying: nothing can change them.
_IMMUTABLE = frozenset({type(None), bool, int, float, str, bytes})

#: The niceness of the writer's thread: a background write yields the cores to training.
WRITER_NICENESS = 19


class BackgroundWriter:
    """Runs file writes on a background thread, one at a time and in order, so that training does not
    wait for serialisation and ``fsync``.

    :meth:`submit` first waits for the previous job, so at most one is in flight and files are replaced
    in the order they were submitted. A job's exception is raised in the caller by the next
    :meth:`submit` or :meth:`wait`. The thread is not a daemon: an interpreter that exits while a job runs
    waits for it, so a started write always finishes (each is atomic, so a killed process leaves the
    previous file). Jobs must save a :func:`snapshot`, not live tensors.

    On Linux the thread runs at the lowest priority (niceness :data:`WRITER_NICENESS`). Otherwise the
    serialisation competes with the training threads for the cores: on a 2-core machine, about 1 to 2
    points of kd's speed against a plain loop (BENCHMARKS.md). The write still finishes when training
    waits for it, at the next write or at the end of the stage.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], object]) -> None:
        """Wait for the previous job (raising its error), then start ``job``."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="kdcore-writer")
        self._thread.start()

    def wait(self) -> None:
        """Block until the job in flight has finished; raise its exception, if any.

        After a Ctrl-C that landed inside ``Thread.start`` there may be no thread to join: either the
        job never started, or it runs untracked, and then the interpreter still waits for it at exit
        (the thread is not a daemon) and its write is atomic. ``wait`` returns in both cases, so that
        the caller's clean-up after the interrupt goes on.
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(RuntimeError):  # "cannot join thread before it is started"
                thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self, job: Callable[[], object]) -> None:
        if sys.platform.startswith("linux"):  # a thread is a task with its own priority there only
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        try:
            job()
        except BaseException as exc:  # handed to the training thread at its next submit() or wait()
            self._error = exc


class EpochCheckpoints:
    """The files a stage keeps of its epochs, written on a :class:`BackgroundWriter` at most every
    ``every_s`` seconds: the state to resume from (``state_path``, the latest epoch), ``last_path`` (the
    latest validated epoch) and ``best_path`` (the best one).

    Each epoch hands its :func:`snapshot` to :meth:`add`; what is not on disk yet waits in memory (at
    most three snapshots, usually one and the same) and :meth:`flush` writes it, each payload serialised
    once: a file holding the same epoch as one written before it is a hard link of it. The resume state
    goes last, after the files it names.

    Writing every epoch costs a host-bound loop (a GPU with small models) about 5 ms of its training
    thread per epoch, because the writer's Python holds the interpreter lock; at most every ``every_s``
    it costs that once. The end of the stage, a stop, an error and Ctrl-C flush at once, so only a
    killed process loses anything: the epochs of the last ``every_s`` seconds, its files still whole.
    """

    def __init__(
        self,
        writer: BackgroundWriter,
        state_path: Path | None,
        last_path: Path,
        best_path: Path,
        every_s: float,
    ) -> None:
        self.writer, self.every_s = writer, every_s
        self.paths = (state_path, last_path, best_path)
        self.pending: list[Any] = [None, None, None]  # the snapshot each path waits for
        self.written_at = time.monotonic()

    def add(self, payload: Any, validated: bool, improved: bool, ended: bool) -> None:
        """Keep the epoch's ``payload`` for the files it belongs to; write them when ``every_s`` has
        passed since the last write, or at once when the stage has ``ended``."""
        for index, wanted in enumerate((self.paths[0] is not None, validated, improved)):
            if wanted:
                self.pending[index] = payload
        if ended or time.monotonic() - self.written_at >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Start writing whatever waits (on the writer's thread; :meth:`BackgroundWriter.wait` for it).
        What waits is forgotten only once its job has started, so a flush that Ctrl-C cut short can be
        repeated."""
        # best, last, then the resume state: a process killed during the job leaves the previous state,
        # never one whose best epoch is not on disk yet
        waiting = reversed(list(zip(self.pending, self.paths, strict=True)))
        jobs = [(payload, path) for payload, path in waiting if payload is not None]
        if not jobs:
            return

        def write() -> None:
            written: dict[int, Path] = {}
            for payload, path in jobs:
                if id(payload) in written:
                    atomic_copy(written[id(payload)], path)
                else:
                    written[id(payload)] = save_checkpoint(path, payload)

        self.writer.submit(write)
        self.pending = [None, None, None]
        self.written_at = time.monotonic()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` (no pickled code).

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable or lacks a ``model`` entry.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"checkpoint {path} could not be read: {exc}") from exc
    if not isinstance(data, dict) or "model" not in data:
        raise CheckpointError(f"checkpoint {path} is not a kdcore checkpoint (no 'model' entry)")
    return data
