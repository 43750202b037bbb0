"""A whole run from Python: `kt_swarm.run(config, models=..., data=..., out=...)` (docs/python-api.md).

The same run as `kt-swarm run`: the same validation, checkpoints, resume and engines, and the same one-line
errors, raised as kt_swarm.UserError with the text the command line prints after `kt-swarm: error: `.
Models may be handed over as built nn.Modules and data as a factory or as Datasets; the config records them
as `model: given` and `data.factory: given` (or the factory's import path, when other processes can import it).
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from kt_swarm.errors import UserError, printable
from kt_swarm.redaction import redact


class RunResult(NamedTuple):
    summary: dict  # summary.json's content
    run_dir: Path


def open_run(config: Any, overrides: Sequence[str], out: str | os.PathLike | None, resume: str | os.PathLike | None,
             stem: str = "python"):
    """(config, RunDir, out): a new run directory for `config` (a path, or raw config data), or the unfinished run
    `resume` with its own config.yaml. The command line opens its runs here too."""
    from kt_swarm.config import load_config, parse_config
    from kt_swarm.rundir import RunDir

    if resume is not None:
        if config is not None or out is not None or overrides:
            raise UserError("--resume continues with the run's own config.yaml: give no CONFIG, --out or overrides")
        path = Path(resume)
        run_dir = RunDir(path, resume=True)  # checks it is an unfinished run directory; creates nothing
        return load_config(path / "config.yaml"), run_dir, path
    if config is None:
        raise UserError("run needs a CONFIG (or --resume RUN_DIR)")
    if isinstance(config, (str, os.PathLike)):
        cfg, stem = load_config(config, list(overrides)), Path(config).stem
    else:
        cfg = parse_config(config, list(overrides))
    path = Path(out or Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg, RunDir(path), path


def _raw_config(config: Any) -> Any:
    """The config as plain data that can take the markers of what was handed over."""
    from kt_swarm.config import Config, read_config_file

    if isinstance(config, Config):  # what was set, not the defaults (data.kind's default would refuse data=)
        return config.model_dump(exclude_unset=True, warnings=False)
    if isinstance(config, (str, os.PathLike)):
        return read_config_file(config)
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    if config is None:
        return {}
    raise UserError(f"kt_swarm.run: config is a {type(config).__name__}; give a path, a mapping or a kt_swarm Config")


def _hand_over(raw: Any, models: Mapping[str, Any], data: Any) -> tuple[dict, dict]:
    """Mark the participants in `models` as `model: given` (with their settings) and the data as kind python;
    returns the raw config and the modules by name."""
    from torch import nn

    from kt_swarm.sources import factory_name

    if not isinstance(raw, dict):
        raise UserError("config: expected a mapping at the top level")
    modules = {}
    for name, given in models.items():
        module, settings = given if isinstance(given, tuple) and len(given) == 2 else (given, {})
        if not isinstance(module, nn.Module):
            raise UserError(f"kt_swarm.run: models[{name!r}] is a {type(module).__name__}, not a torch.nn.Module")
        if not isinstance(settings, Mapping) or "model" in settings or "name" in settings:
            raise UserError(f"kt_swarm.run: models[{name!r}]'s settings must be a mapping of participant keys (lr, "
                            f"mean, std, input_size, ...) without model or name")
        entries = raw.setdefault("participants", [])
        if not isinstance(entries, list):
            raise UserError("config: participants must be a list")
        entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == name), None)
        if entry is None:
            if "lr" not in settings:
                raise UserError(f"kt_swarm.run: models[{name!r}] is not a participant of the config; give its "
                                f"learning rate at least: models={{{name!r}: (module, {{'lr': 1e-3}})}}")
            entry = {"name": name}
            entries.append(entry)
        elif entry.get("model", "given") != "given":
            raise UserError(f"participant '{name}' has model {entry['model']!r} in the config and an nn.Module in "
                            f"models=: give one of them")
        entry.update({"model": "given", **settings})
        modules[name] = module
    if data is not None:
        section = raw.setdefault("data", {})
        if not isinstance(section, dict):
            raise UserError("config: data must be a mapping")
        if section.get("kind", "python") != "python":
            raise UserError(f"kt_swarm.run was handed data, but the config's data.kind is {section['kind']!r} (leave "
                            f"it unset, or python)")
        if not callable(data) and not isinstance(data, Mapping):
            raise UserError(f"kt_swarm.run: data is a {type(data).__name__}; give a factory (a function returning "
                            f"the splits) or a mapping of splits (train, test, ...)")
        section["kind"] = "python"
        section["factory"] = (callable(data) and factory_name(data)) or "given"
    return raw, modules


def run(config: str | os.PathLike | Mapping | Any = None, *, models: Mapping[str, Any] | None = None,
        data: Callable | Mapping | None = None, out: str | os.PathLike | None = None,
        resume: str | os.PathLike | None = None, overrides: Sequence[str] = (), engine: str = "ray",
        address: str | None = None, on_record: Callable[[dict], None] | None = None) -> RunResult:
    """Run the main job and return its summary and run directory.

    config: a YAML path, a mapping, or a kt_swarm.config.Config. models: participant name -> a built nn.Module, or
    (module, settings) where settings are participant keys (lr, mean, std, input_size, in_chans, zoo, ...); a name
    the config does not list is added. data: a factory returning the splits (called with data.args), or the
    splits themselves (docs/own-data.md). resume: an unfinished run directory (hand the same models and data
    again). overrides: `key=value` strings as on the command line. engine: "ray" or "local"."""
    from kt_swarm.coordinator import run as run_job
    from kt_swarm.rundir import is_resumable
    from kt_swarm.sources import factory_name

    if engine not in ("ray", "local"):
        raise UserError(f"kt_swarm.run: engine must be 'ray' or 'local', got {engine!r}")
    path = None
    if isinstance(overrides, str):
        overrides = [overrides]
    try:
        models = dict(models or {})
        if resume is not None:
            if config is not None or out is not None or overrides:
                raise UserError("kt_swarm.run: resume continues with the run's own config.yaml: give no config, out "
                                "or overrides")
            cfg, run_dir, path = open_run(None, (), None, resume)
            named = cfg.data.factory not in (None, "given")
            if data is not None and named and not (callable(data) and factory_name(data) == cfg.data.factory):
                raise UserError(f"kt_swarm.run: the run reads data.factory '{cfg.data.factory}'; data= is another "
                                f"(leave it out to resume)")
            _, modules = _hand_over({"participants": [{"name": n} for n in models]}, models, None)
        else:
            raw, modules = _hand_over(_raw_config(config), models, data)
            stem = Path(config).stem if isinstance(config, (str, os.PathLike)) else "python"
            cfg, run_dir, path = open_run(raw, overrides, out, None, stem)
        given = {p.name: p.model == "given" for p in cfg.participants}
        for name in modules:
            if not given.get(name):
                raise UserError(f"kt_swarm.run: models[{name!r}] is not " + (
                    "a participant of the run being resumed" if name not in given else
                    "a participant the run was handed as an nn.Module (its config builds it)"))
        with run_dir:
            summary = run_job(cfg, run_dir, engine, address, on_record, models=modules, data_given=data)
    except UserError as e:  # the command line's one line, as an exception
        raise UserError(printable(redact(str(e)))) from None
    except KeyboardInterrupt:
        if path is not None and is_resumable(path):
            raise KeyboardInterrupt(f"interrupted; continue with kt_swarm.run(resume={str(path)!r}, ...)") from None
        raise
    return RunResult(summary, path)
