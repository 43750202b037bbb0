"""A run directory: finished (summary.json, written last), resumable (checkpoints/manifest.json), or absent.

It is created at its final path so that a run killed outright (SIGKILL, a lost node) can be found and
continued with `kt-swarm run --resume RUN_DIR`. A run that fails before its first checkpoint leaves
nothing behind; one that fails later keeps its checkpoints. Every file is replaced atomically.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from kt_swarm.errors import UserError


def atomic_write(path: Path, data: bytes) -> None:
    """Temporary file, fsync, rename, fsync of the folder: readers see the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(run_dir: str | Path) -> list[dict]:
    """Every record of RUN_DIR/metrics.jsonl, in order, as written (summary.upgrade renames an older run's
    keys). A last line without its newline is one still being written, or cut short by a kill: left out
    (a resume cuts the log back to its checkpoint anyway). FileNotFoundError when there is no log; a
    finished line that is not JSON is a damaged log: UserError naming the line."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_bytes().split(b"\n")[:-1]  # the piece after the last newline is not a record (yet)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"'{path}': line {number} is not a JSON record ({getattr(e, 'msg', e)})") from None
    return records


def is_resumable(path: Path) -> bool:
    return (Path(path) / "checkpoints" / "manifest.json").exists()


class RunDir:
    def __init__(self, out: str | Path, resume: bool = False):
        self.path = Path(out)
        self.resume = resume
        if resume:
            if not (self.path / "config.yaml").is_file():
                raise UserError(f"run directory '{self.path}' to resume is not a kt_swarm run directory (no config.yaml)")
            if (self.path / "summary.json").exists():
                raise UserError(f"run directory '{self.path}' to resume has already finished (summary.json exists)")
        elif self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise UserError(f"run directory '{self.path}' already exists and is not empty (choose another out)")
        self._metrics = None

    def __enter__(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        # One process at a time: a scheduler that requeues a job while its old driver still runs must
        # not get two runs interleaving checkpoints in one directory.
        self._lock = open(self.path / ".lock", "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise UserError(f"'{self.path}' is in use by another kt-swarm process") from None
        self._metrics = open(self.path / "metrics.jsonl", "ab" if self.resume else "wb")
        return self

    def log(self, record: dict) -> None:
        self._metrics.write((json.dumps(record) + "\n").encode())
        self._metrics.flush()

    def metrics_bytes(self) -> int:
        """Where metrics.jsonl ends now, on disk: a checkpoint records it, a resume cuts the log back to it."""
        self._metrics.flush()
        os.fsync(self._metrics.fileno())
        return self._metrics.tell()

    def truncate_metrics(self, size: int) -> None:
        self._metrics.flush()
        size = min(size, os.fstat(self._metrics.fileno()).st_size)  # never pad a log that lost its end
        self._metrics.truncate(size)
        self._metrics.seek(size)

    def check_data(self, outline: dict) -> None:
        """data.json: the data's outline (Dataset.outline) when the run starts; on resume, the data read again
        must have the same one (a run directory from before data.json is not checked)."""
        path = self.path / "data.json"
        if not self.resume:
            self.write_json("data.json", outline)
            return
        if not path.exists():
            return
        was = json.loads(path.read_text())
        differs = [k for k in ("splits", "labels") if was.get(k) != outline.get(k)]  # not the source: data may move
        if differs:
            what = differs[0]
            raise UserError(f"run directory '{self.path}' was run on other data: its {what} were {was.get(what)}, now "
                            f"{outline.get(what)} (resume it with the data it started with)")

    def write_json(self, name: str, data) -> None:
        atomic_write(self.path / name, (json.dumps(data, indent=2) + "\n").encode())

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write(self.path / name, data)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._metrics.close()
        self._lock.close()  # and with it the lock
        if exc_type is not None and not self.resume and not is_resumable(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
