"""A run directory that is either complete or absent: written under a temporary name, renamed at the end."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kt_swarm.errors import UserError


class RunDir:
    def __init__(self, out: str | Path):
        self.final = Path(out)
        if self.final.exists() and (not self.final.is_dir() or any(self.final.iterdir())):
            raise UserError(f"--out '{self.final}' already exists and is not empty")
        self.path = self.final.with_name(f".{self.final.name}.partial-{os.getpid()}")
        self._metrics = None

    def __enter__(self) -> "RunDir":
        self.final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir()
        self._metrics = open(self.path / "metrics.jsonl", "w")
        return self

    def log(self, record: dict) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def write_json(self, name: str, data) -> None:
        (self.path / name).write_text(json.dumps(data, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        (self.path / name).write_text(text)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._metrics.close()
        if exc_type is None:
            if self.final.exists():
                self.final.rmdir()  # empty, checked above
            os.replace(self.path, self.final)
        else:
            shutil.rmtree(self.path, ignore_errors=True)
