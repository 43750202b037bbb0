"""Checkpoint sets in RUN_DIR/checkpoints, and the manifest that says which one to trust.

    checkpoints/
      manifest.json            the only source of truth: kept sets, newest last, every file's sha256
      start/<name>.pt          each participant's weights before any transfer (never pruned)
      transfer-0000500/<name>.pt   model, optimizer and RNG state of one participant at that step
      transfer-0000500/_run.pt     the coordinator's own state at that step (arm, epoch, accumulators)
      best/transfer/<name>-e2.pt   a participant's best-on-validation weights (selected at epoch 2; one
                                   that kept its start is selected at start/<name>.pt)

A set is consistent because it is listed only after every one of its files is on disk: each file is
written to a temporary name, fsynced and renamed, the manifest last, the same way. A crash at any
moment leaves the previous manifest and the files it lists intact; files it does not list are
leftovers, deleted at the next save. Loading checks the sha256 the manifest recorded, then reads with
torch.load(weights_only=True): tensors and plain containers only, so a checkpoint never runs code.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from kt_swarm.errors import UserError
from kt_swarm.rundir import atomic_write

FORMAT = "kt_swarm.checkpoint/1"


def config_digest(cfg_dict: dict) -> str:
    """Identifies the run a checkpoint belongs to: the sha256 of its resolved config, whatever the
    order of its keys (model_args may hold keys and values JSON cannot, so repr is the canonical form)."""

    def canonical(x):
        if isinstance(x, dict):
            return sorted((repr(k), canonical(v)) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return [canonical(v) for v in x]
        return repr(x)

    return hashlib.sha256(repr(canonical(cfg_dict)).encode()).hexdigest()


class Checkpoints:
    def __init__(self, root: Path, digest: str, participants: list[str], keep: int):
        self.root, self.digest, self.names, self.keep = Path(root), digest, participants, keep
        self.manifest = self._read_manifest() if (self.root / "manifest.json").exists() else None
        self._written: dict[str, str] = {}  # files written since the last manifest: rel -> sha256

    @property
    def latest(self) -> str | None:
        return self.manifest["sets"][-1]["name"] if self.manifest else None

    def set_info(self, name: str) -> dict:
        return next(s for s in self.manifest["sets"] if s["name"] == name)

    def member(self, set_name: str, index: int) -> str:
        """Where set `set_name` keeps participant `index` (start/<name>.pt: the weights every arm starts from)."""
        return f"{set_name}/{self.names[index]}.pt"

    # ---- writing

    def _write(self, rel: str, obj: dict) -> str:
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "config_sha256": self.digest, **obj}, buf)
        data = buf.getvalue()
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        self._written[rel] = hashlib.sha256(data).hexdigest()
        return rel

    def save_weights(self, rel_dir: str, index: int, weights: dict, tag: str = "") -> str:
        """One participant's weights alone (a best model); listed by the next set that refers to it."""
        name = self.names[index]
        return self._write(f"{rel_dir}/{name}{tag}.pt", {"participant": name, "model": weights})

    def save(self, name: str, states, run_state: dict, metrics_bytes: int, refers_to: list[str] = (),
             at: dict | None = None) -> None:
        """Write set `name`: `states` yields each participant's {model, optimizer, rng} in order (one in
        memory at a time); `refers_to` are earlier files the run state names (best models); `at` says
        where the run is (arm, epoch, step: the next one to run), for people reading the manifest."""
        files = {}
        for i, state in enumerate(states):
            rel = self._write(self.member(name, i), {"participant": self.names[i], **state})
            files[rel] = self._written[rel]
        run_rel = self._write(f"{name}/_run.pt", {"participant": None, "run": run_state})  # no participant is "_..."
        files[run_rel] = self._written[run_rel]
        known = {**self._listed_files(), **self._written}
        for rel in refers_to:
            files[rel] = known[rel]
        sets = [s for s in (self.manifest["sets"] if self.manifest else []) if s["name"] != name]
        sets.append({"name": name, "at": at or {}, "files": files, "run": run_rel, "metrics_bytes": metrics_bytes})
        pinned = [s for s in sets if s["name"] == "start"]
        steps = [s for s in sets if s["name"] != "start"]
        sets = pinned + steps[-self.keep:]
        self.manifest = {"format": FORMAT, "config_sha256": self.digest, "participants": self.names, "sets": sets}
        atomic_write(self.root / "manifest.json", (json.dumps(self.manifest, indent=1) + "\n").encode())
        self._written = {}
        self._delete_unlisted()

    def _listed_files(self) -> dict[str, str]:
        return {rel: sha for s in (self.manifest["sets"] if self.manifest else []) for rel, sha in s["files"].items()}

    def _delete_unlisted(self) -> None:
        listed = set(self._listed_files()) | {"manifest.json"}
        for path in sorted(self.root.rglob("*"), reverse=True):  # files before their folders
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and rel not in listed:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()

    # ---- reading

    def _refuse(self, what: str, why: str) -> UserError:
        return UserError(f"checkpoint '{what}' {why}; refusing to load it")

    def _read_manifest(self) -> dict:
        path = self.root / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._refuse(str(path), f"is unreadable or truncated ({type(e).__name__})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise self._refuse(str(path), "is not a kt_swarm checkpoint manifest")
        if manifest.get("config_sha256") != self.digest or manifest.get("participants") != self.names:
            raise self._refuse(str(path), "belongs to another run (its config differs from this run's config.yaml)")
        try:
            sets = manifest["sets"]
            assert isinstance(sets, list) and sets
            for s in sets:
                assert isinstance(s["name"], str) and isinstance(s["run"], str)
                assert type(s["metrics_bytes"]) is int and s["metrics_bytes"] >= 0
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in s["files"].items())
                assert all(not Path(k).is_absolute() and ".." not in Path(k).parts for k in s["files"])
        except (AssertionError, KeyError, TypeError, AttributeError):
            raise self._refuse(str(path), "is malformed") from None
        return manifest

    def _check_hash(self, rel: str) -> bytes:
        path = self.root / rel
        expected = self._listed_files().get(rel) or self._written.get(rel)
        if expected is None:
            raise self._refuse(str(path), "is not listed in the manifest")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise self._refuse(str(path), f"cannot be read ({e.strerror or type(e).__name__})") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise self._refuse(str(path), "is truncated or was modified (sha256 differs from the manifest)")
        return data

    def load(self, rel: str, participant: str | None = ...) -> dict:
        """One listed file, checked against its recorded sha256 and its own header."""
        path = self.root / rel
        data = self._check_hash(rel)
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - whatever torch says, the file is not ours
            raise self._refuse(str(path), f"is not a loadable weights-only file ({type(e).__name__})") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("config_sha256") != self.digest:
            raise self._refuse(str(path), "is not a checkpoint of this run")
        if participant is not ... and obj.get("participant") != participant:
            raise self._refuse(str(path), f"holds participant {obj.get('participant')!r}, not {participant!r}")
        return obj

    def load_set(self, name: str):
        """(run state, a generator of each participant's {model, optimizer, rng} in turn) of a listed
        set. Every file's hash is checked before any is used; states are read one at a time (N models
        with their optimizer state need not fit in this process's memory at once)."""
        info = self.set_info(name)
        for rel in info["files"]:
            self._check_hash(rel)
        run_state = self.load(info["run"], None)["run"]

        def states():
            for i, participant in enumerate(self.names):
                obj = self.load(self.member(name, i), participant)
                yield {k: obj.get(k) for k in ("model", "optimizer", "rng")}

        return run_state, states()

    def load_weights(self, rel: str, index: int) -> dict:
        return self.load(rel, self.names[index])["model"]
