"""kt-swarm sweep SWEEP.yaml: Ray Tune over config keys, each trial a full swarm run.

The sweep file is kt_swarm's own (below) or a standard `wandb sweep` YAML; both name parameters the
W&B way (`values`, `value`, `min`/`max` with a `distribution`), keyed by dotted config keys
(`participants.*.lr` sets every participant). SweepFile is its schema (`kt-swarm schema --sweep`):

    config: configs/quickstart.yaml     # the base config (a wandb YAML may name it in `command`)
    method: asha                        # grid | random | bayes (needs optuna) | asha (random + ASHA stopping)
    metric: {name: val_accuracy_mean, goal: maximize}   # validation only: the test split never chooses
    num_samples: 8                      # trials (grid: repeats of the whole grid)
    max_concurrent_trials: 1
    seed: 0                             # the search's own random state: the same trials in the same order
    parameters:
      transfer.temperature: {values: [1, 2, 4]}
      participants.*.lr: {distribution: log_uniform_values, min: 1e-5, max: 1e-3}

Every trial reserves one placement group: a small bundle for the trial itself and one bundle per
participant, in which the swarm's actors are then placed (swarm.RaySwarm). Each epoch of the
transfer arm reports `val_{metric}_mean` for the task's headline metric (metrics.HEADLINE:
val_accuracy_mean, val_miou_mean, val_cc_mean; the mean over participants of the validation value the
run would select so far, as summary.json will have it), so ASHA can stop weak trials early; a sweep file naming the old `val_acc_mean` is read
as it, with a warning. With `tracking.wandb` in the sweep (or the base
config), every trial is logged to W&B through Ray Tune's WandbLoggerCallback, offline without a key.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, ValidationError, model_validator

from kt_swarm.config import (Count, Data, Float, NonNegativeInt, Section, Str, TrackingConfig, _bad, _short, _yaml_float,
                             load_config, parse_config, to_dict, user_error)
from kt_swarm.errors import UserError, first_line
from kt_swarm.metrics import HEADLINE

log = logging.getLogger("kt_swarm")
METHODS = ("grid", "random", "bayes", "asha")
METRICS = tuple(f"val_{name}_mean" for name in HEADLINE.values())  # val_accuracy_mean, val_miou_mean, val_cc_mean
OLD_METRIC = "val_acc_mean"  # the name before the headline metric was named per task
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform", "log_uniform_values")


def _one_of(values: tuple[str, ...], message: str, old: tuple[str, ...] = ()) -> Any:
    """A string among `values` (the schema lists them) or `old` ones (still read); else `message` with {value}."""
    def check(value: str) -> str:
        if value in values + old:
            return value
        raise _bad(message.format(value=_short(value)))
    return Annotated[Str, AfterValidator(check), Field(json_schema_extra={"enum": list(values)})]


def _number(value: Any) -> int | float:
    value = _yaml_float(value)  # YAML 1.1 reads 1e-4 as a string
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"expected a number, got {_short(value)}")
    return value


Number = Annotated[int | float, PlainValidator(_number, json_schema_input_type=float)]  # ints stay ints: int_uniform
MetricName = _one_of(METRICS, "expected " + " or ".join(METRICS) + " (validation only: the test split never chooses), "
                     "got {value}", old=(OLD_METRIC,))
Distribution = _one_of(DISTRIBUTIONS, "distribution {value} is not supported (" + ", ".join(DISTRIBUTIONS) + ")")


class SweepMetric(Section):
    """What the sweep optimises: the mean over participants of the task's headline metric, on validation."""

    name: MetricName = Field(description="val_{metric}_mean of the base config's task: val_accuracy_mean, "
                             "val_miou_mean or val_cc_mean")
    goal: Literal["maximize", "minimize"] = Field("maximize", description="higher (maximize) or lower is better")
    target: Float | None = Field(None, description="W&B: the sweep stops once a run reaches it (Ray Tune ignores it)")


class Parameter(Section):
    """One config key's values, the W&B way: `value`, `values`, or `min` and `max` (with a `distribution`)."""

    value: Any = Field(None, description="a constant: every trial sets the key to it")
    values: list[Any] | None = Field(None, min_length=1, description="the choices (grid: every one of them)")
    min: Number | None = Field(None, description="the lower bound (not for grid)")
    max: Number | None = Field(None, description="the upper bound (not for grid)")
    distribution: Distribution | None = Field(
        None, description="default: int_uniform when min and max are ints, else uniform; log_uniform: min and max "
        "are natural-log exponents (W&B's), log_uniform_values: the values themselves")

    @model_validator(mode="after")
    def _one_kind(self) -> Parameter:
        if "value" in self.model_fields_set or self.values is not None:
            return self
        if self.min is None or self.max is None:
            raise _bad("expected 'values', 'value', or 'min' and 'max'")
        if not self.min < self.max:
            raise _bad(f"min and max must be numbers with min < max, got {self.min} and {self.max}")
        if self.distribution == "log_uniform_values" and self.min <= 0:
            raise _bad(f"log_uniform_values needs min > 0, got {self.min}", "min")
        return self


class SweepParameters(Section):
    parameters: dict[Str, Parameter] = Field(min_length=1, description="dotted config keys (`participants.*.lr` sets "
                                             "every participant) and their values")


def _metric(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class SweepFile(SweepParameters):
    """A kt_swarm sweep file (`kt-swarm sweep SWEEP.yaml`): Ray Tune over config keys, each trial a full run.
    A standard `wandb sweep` YAML is read too (its program, command, project...)."""

    model_config = {"title": "kt_swarm sweep"}

    config: Str | None = Field(None, description="the base config (a wandb YAML may name it in `command` instead)")
    method: Literal[METHODS] = Field("random", description="grid | random | bayes (needs optuna) | asha (random + ASHA "
                                     "stopping)")
    metric: Annotated[SweepMetric | None, BeforeValidator(_metric, json_schema_input_type=SweepMetric | Str | None)] = Field(
        None, description="default: val_{metric}_mean of the base config's task, maximized (a name alone is maximized)")
    num_samples: Count | None = Field(None, description="trials (grid: repeats of the whole grid); default: 1 for "
                                    "grid, else run_cap or 4")
    max_concurrent_trials: Count = Field(1, description="trials at once")
    seed: NonNegativeInt | None = Field(None, description="the search's own random state: the same trials in the same order")
    tracking: TrackingConfig | None = Field(None, description="tracking.wandb: every trial logged to W&B (Ray Tune's "
                                            "WandbLoggerCallback)")
    program: Str | None = Field(None, description="wandb sweep: the program (kt-swarm)")
    command: list[Str] | None = Field(None, description="wandb sweep: the command line, naming the base config")
    name: Str | None = Field(None, description="wandb sweep: its name")
    description: Str | None = Field(None, description="wandb sweep: its description")
    project: Str | None = Field(None, description="wandb sweep: the W&B project (the trials' too)")
    entity: Str | None = Field(None, description="wandb sweep: the W&B entity")
    early_terminate: Data | None = Field(None, description="wandb sweep: W&B's early termination (Ray Tune: method asha)")
    run_cap: Count | None = Field(None, description="wandb sweep: at most this many runs (num_samples when unset)")

    @model_validator(mode="after")
    def _base_config(self) -> SweepFile:
        self.config = self.config or next((a for a in self.command or [] if a.endswith((".yaml", ".yml"))), None)
        if not self.config:
            raise _bad("name the base config (`config: configs/....yaml`, or the config in a wandb `command`)", "config")
        return self


def load_sweep(path: str | Path) -> dict:
    """The sweep file, normalised: config, method, metric (None: the base config's task's), mode, num_samples,
    max_concurrent_trials, seed (or None), parameters, wandb (a tracking.wandb mapping or None)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"sweep file '{path}' does not exist") from None
    except yaml.YAMLError as e:
        raise UserError(f"sweep file '{path}': YAML syntax error: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"sweep file '{path}': expected a mapping")
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as e:
        raise user_error(e, SweepFile, "sweep key") from None
    wandb = spec.tracking.wandb.model_dump() if spec.tracking and spec.tracking.wandb else None
    if wandb is None and spec.project:  # a wandb sweep YAML names its project at the top
        wandb = {"project": spec.project, **({"entity": spec.entity} if spec.entity else {})}
    return {"config": spec.config, "method": spec.method, "metric": spec.metric and spec.metric.name,
            "mode": "min" if spec.metric and spec.metric.goal == "minimize" else "max",
            "num_samples": spec.num_samples or spec.run_cap or (1 if spec.method == "grid" else 4),
            "max_concurrent_trials": spec.max_concurrent_trials, "seed": spec.seed,
            "parameters": {k: p.model_dump(exclude_unset=True) for k, p in spec.parameters.items()}, "wandb": wandb}


def sweep_metric(name: str | None, task: str) -> str:
    """The metric a sweep over a `task` config optimises: val_{HEADLINE[task]}_mean; the old val_acc_mean is
    read as it, with a warning."""
    wanted = f"val_{HEADLINE[task]}_mean"
    if name == OLD_METRIC:
        log.warning("sweep metric %s is now called %s (task %s): reading it as that; rename it in the sweep file",
                    OLD_METRIC, wanted, task)
    elif name not in (None, wanted):
        raise UserError(f"sweep key 'metric.name': task {task} is chosen on {wanted}, got {name}")
    return wanted


def search_space(parameters: dict, method: str) -> dict:
    """W&B-style parameter specs -> Ray Tune search space, keyed by dotted config key."""
    from ray import tune

    try:
        specs = SweepParameters.model_validate({"parameters": parameters}).parameters
    except ValidationError as e:
        raise user_error(e, SweepParameters, "sweep key") from None
    space = {}
    for key, spec in specs.items():
        if "value" in spec.model_fields_set:
            space[key] = spec.value
        elif spec.values is not None:
            space[key] = tune.grid_search(spec.values) if method == "grid" else tune.choice(spec.values)
        elif method == "grid":
            raise UserError(f"sweep parameter '{key}': a grid search needs 'values', not min/max")
        else:
            lo, hi = spec.min, spec.max
            dist = spec.distribution or ("int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform")
            if dist == "uniform":
                space[key] = tune.uniform(lo, hi)
            elif dist == "int_uniform":
                space[key] = tune.randint(int(lo), int(hi) + 1)
            elif dist == "log_uniform_values":
                space[key] = tune.loguniform(lo, hi)
            else:  # log_uniform, W&B's: min and max are natural-log exponents
                space[key] = tune.loguniform(math.exp(lo), math.exp(hi))
    return space


def _overrides(params: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def _trial_resources(cfg, cluster: dict, engine: str = "ray"):
    """One placement group per trial: the trial itself, then one bundle per participant actor (--engine ray).
    With --engine local every participant runs in the trial's own process, so its one bundle holds what
    the participants would have had: Ray gives it as many threads as CPUs (not 1 for a 0.5-CPU trial)."""
    from ray import tune

    from kt_swarm.swarm.placement import actor_hosts

    n, res, per = len(actor_hosts(cfg)), cfg.resources, cfg.placement.participants_per_actor
    gpu_total = cluster.get("GPU", 0)
    if engine == "local":
        cpus = res.cpus_per_participant * n if res.cpus_per_participant is not None else max(1.0, cluster.get("CPU", 1))
        return tune.PlacementGroupFactory([{"CPU": cpus, **({"GPU": 1} if gpu_total else {}), **res.custom}])
    gpus = res.gpus_per_participant * per if res.gpus_per_participant is not None else (1.0 if gpu_total >= n else gpu_total / n)
    cpus = res.cpus_per_participant * per if res.cpus_per_participant is not None else max(0.5, (cluster.get("CPU", 1) - 0.5) / n)
    participant = {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **{k: v * per for k, v in res.custom.items()}}
    return tune.PlacementGroupFactory([{"CPU": 0.5}] + [dict(participant) for _ in range(n)],
                                      strategy=cfg.placement.strategy)


def trial(params: dict, *, base: dict, engine: str, out: str) -> None:
    """One Ray Tune trial: a full kt-swarm run of the base config with `params` applied."""
    from ray import tune

    from kt_swarm.coordinator import run
    from kt_swarm.rundir import RunDir

    cfg = parse_config(copy.deepcopy(base), _overrides(params))
    cfg.tracking.wandb = None  # the sweep's W&B callback logs the trial
    selected: dict[str, float] = {}  # per participant, the validation value the run would select now
    reported = [0]  # epochs Tune has seen: a restored trial evaluates the epochs after its checkpoint again
    metric = f"val_{HEADLINE[cfg.task]}"

    def report(record: dict) -> None:
        """Tune sees what summary.json's val_{metric}_mean will be: the selected validation values, averaged
        (selection best_val: the best so far, the arm's start included; last: the latest epoch's)."""
        if record.get("event") != "eval" or record.get("arm") != "transfer":
            return
        values = record.get(metric, record.get("val_acc", {}))  # val_acc: records from before the rename
        if record["epoch"] < 0:  # the arm's start
            if cfg.selection == "best_val":
                selected.update(values)
        elif record["epoch"] >= reported[0]:
            for name, value in values.items():
                selected[name] = value if cfg.selection == "last" else max(selected.get(name, -math.inf), value)
            reported[0] = record["epoch"] + 1
            tune.report({f"{metric}_mean": sum(selected.values()) / len(selected), "epoch": reported[0]})

    import ray

    run_dir = Path(out) / tune.get_context().get_trial_id()
    with RunDir(run_dir) as rd:
        pg = ray.util.get_current_placement_group()
        rd.write_json("trial.json", {"trial_id": tune.get_context().get_trial_id(), "params": params,
                                     "placement_group": pg.id.hex() if pg else None})
        run(cfg, rd, engine, on_record=report)


def sweep(path: str | Path, out: str | Path, engine: str = "ray", address: str | None = None) -> dict:
    """Run the sweep; writes OUT/sweep.json and OUT/sweep.md (and every trial's run directory under
    OUT/trials/); returns the results."""
    spec = load_sweep(path)
    base_cfg = load_config(spec["config"])
    spec["metric"] = sweep_metric(spec["metric"], base_cfg.task)
    base = yaml.safe_load(Path(spec["config"]).read_text())
    space = search_space(spec["parameters"], spec["method"])
    # Every key and value is checked before any trial starts.
    epochs = max(parse_config(copy.deepcopy(base), _overrides(params)).transfer.epochs for params in _examples(space))
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out '{out}' already exists and is not empty")
    wandb = spec["wandb"] or (to_dict(base_cfg)["tracking"]["wandb"])
    if wandb and not os.environ.get("WANDB_MODE"):
        from kt_swarm.tracking import has_api_key

        if not has_api_key():  # set before Ray starts, so the logging actors inherit it
            os.environ["WANDB_MODE"] = "offline"
            log.info("W&B: no API key here, the trials log offline (upload later with `wandb sync`)")

    import ray
    from ray import tune

    from kt_swarm.swarm import init_ray

    owns_ray = init_ray(address)
    try:
        search_alg, scheduler = None, None
        if spec["method"] == "bayes":
            try:
                from ray.tune.search.optuna import OptunaSearch
            except ImportError:
                raise UserError("sweep method 'bayes' needs optuna (pip install optuna); or use method: asha") from None
            search_alg = OptunaSearch(metric=spec["metric"], mode=spec["mode"], seed=spec["seed"])
        elif spec["seed"] is not None:  # Tune's own generator (grid, random), drawing from this seed
            from ray.tune.search import BasicVariantGenerator

            search_alg = BasicVariantGenerator(random_state=spec["seed"])
        if spec["method"] == "asha":
            # ASHA stops every trial whose report reaches max_t: at `epochs` it would stop each one at its
            # last epoch, before its test and summary. One more than the last epoch keeps the same rungs.
            scheduler = tune.schedulers.ASHAScheduler(time_attr="epoch", grace_period=1, reduction_factor=2,
                                                      max_t=epochs + 1)
        callbacks = []
        if wandb:
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=wandb.get("project", "kt_swarm"), group=wandb.get("group"),
                                                 entity=wandb.get("entity"), tags=wandb.get("tags"), log_config=True))
        cluster = ray.cluster_resources()
        # Per trial: its parameters may change what it reserves (a participant's ranks, its resources).
        trainable = tune.with_resources(
            tune.with_parameters(trial, base=base, engine=engine, out=str(out / "trials")),
            lambda params: _trial_resources(parse_config(copy.deepcopy(base), _overrides(params)), cluster, engine))
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(metric=spec["metric"], mode=spec["mode"], num_samples=spec["num_samples"],
                                        max_concurrent_trials=spec["max_concurrent_trials"], search_alg=search_alg,
                                        scheduler=scheduler),
            run_config=tune.RunConfig(name="tune", storage_path=str(out), callbacks=callbacks, verbose=0),
        )
        grid = tuner.fit()
    finally:
        if owns_ray:
            ray.shutdown()
    return _write_results(grid, spec, out)


def _examples(space: dict) -> list[dict]:
    """A few concrete parameter sets from the space (each grid value, each choice, the bounds)."""
    from ray.tune.search.sample import Categorical, Domain

    examples = [{}]
    for key, domain in space.items():
        if isinstance(domain, dict) and "grid_search" in domain:
            values = domain["grid_search"]
        elif isinstance(domain, Categorical):
            values = list(domain.categories)
        elif isinstance(domain, Domain):  # Float, Integer: the lower bound
            values = [domain.lower]
        else:  # a constant (`value:`), of any type: a string has .lower too
            values = [domain]
        examples = [{**e, key: v} for e in examples for v in values][:64]
    return examples


def _write_results(grid, spec: dict, out: Path) -> dict:
    trials = []
    for result in grid:
        metrics = result.metrics or {}
        trial_dir = out / "trials" / str(metrics.get("trial_id"))
        error = None if result.error is None else first_line(getattr(result.error, "cause", None) or result.error)
        # Finished (summary.json), failed, or stopped early by the scheduler (ASHA): its directory keeps
        # the checkpoints and says so, and `kt-swarm run --resume` would finish it.
        status = "finished" if (trial_dir / "summary.json").exists() else "failed" if error else "stopped"
        if status == "stopped" and trial_dir.is_dir():
            (trial_dir / "stopped.json").write_text(json.dumps(
                {"stopped_by": spec["method"], "after_epochs": metrics.get("epoch"),
                 "resume": f"kt-swarm run --resume {trial_dir}"}, indent=2) + "\n")
        trials.append({
            "trial": metrics.get("trial_id"),
            "params": {k: v for k, v in (result.config or {}).items()},
            spec["metric"]: metrics.get(spec["metric"]),
            "epochs": metrics.get("epoch"),
            "status": status,
            "error": error,
            "summary": str(trial_dir / "summary.json") if status == "finished" else None,
        })
    scored = [t for t in trials if t[spec["metric"]] is not None]
    best = (max if spec["mode"] == "max" else min)(scored, key=lambda t: t[spec["metric"]]) if scored else None
    results = {"method": spec["method"], "metric": spec["metric"], "mode": spec["mode"], "config": spec["config"],
               "best": best, "trials": trials}
    (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    keys = list(spec["parameters"])
    rows = ["| trial | " + " | ".join(keys) + f" | {spec['metric']} | epochs | status | error |",
            "|---|" + "---|" * (len(keys) + 4)]
    for t in trials:
        value = t[spec["metric"]]
        rows.append(f"| {t['trial']} | " + " | ".join(str(t["params"].get(k)) for k in keys)
                    + f" | {'-' if value is None else f'{100 * value:.2f}'} | {t['epochs'] or '-'} | {t['status']} | "
                    f"{t['error'] or ''} |")
    (out / "sweep.md").write_text(
        f"# kt-swarm sweep ({spec['method']}) over {spec['config']}\n\n"
        f"Chosen on {spec['metric']} (validation; {spec['mode']}). Test results are in each trial's run directory.\n\n"
        + "\n".join(rows) + "\n" + (f"\nBest: trial {best['trial']}, {best['params']}\n" if best else "\nNo trial finished.\n"))
    return results
