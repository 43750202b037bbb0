"""kt-swarm: the command line. Bad input ends in one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from kt_swarm.errors import UserError, printable
from kt_swarm.redaction import RedactingFormatter, redact

log = logging.getLogger("kt_swarm")


def _error_line(message: str) -> str:
    """What every error ends as: one printable line, secrets masked."""
    return f"kt-swarm: error: {printable(redact(message))}"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # no abbreviations: `--res` is not silently --resume
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> None:  # argparse's own errors: one line, code 2
        self.exit(2, _error_line(message) + "\n")


def _path(text: str) -> str:
    if not text or "\0" in text:  # the OS cannot name such a file
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable path")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kt-swarm", description="Many-to-many knowledge transfer between pretrained models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a swarm from a YAML config")
    run.add_argument("config", nargs="?", type=_path, help="YAML config, e.g. configs/quickstart.yaml")
    run.add_argument("assignments", nargs="*", metavar="KEY=VALUE",
                     help="overrides like --set, without it (the form `wandb agent` passes as ${args_no_hyphens})")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (dotted, list indices allowed: participants.0.lr=3e-4)")
    run.add_argument("--out", type=_path, help="run directory to create (default: runs/<config>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", type=_path,
                     help="continue an unfinished run from its last consistent checkpoint, with its own config.yaml")
    run.add_argument("--fork", metavar="RUN_DIR", type=_path,
                     help="a new run from RUN_DIR's last checkpoint with changed settings (--set KEY=VALUE: "
                          "learning rates, epochs, transfer settings...), recorded as forked_from")
    run.add_argument("--dry-run", action="store_true",
                     help="check the config, model names and (with --resume) every checkpoint file; print the "
                          "resolved config; start and write nothing")
    report = sub.add_parser("report", help="rebuild a run's report.png and report.md, or compare runs side by side")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", type=_path, help="finished run directories")
    report.add_argument("--out", type=_path, help="where several runs' compare.png and compare.md go (default: runs/compare-<time>)")
    sweep = sub.add_parser("sweep", help="search config keys with Ray Tune, every trial a full run")
    sweep.add_argument("sweep", metavar="SWEEP.yaml", type=_path, help="kt_swarm or `wandb sweep` YAML, e.g. configs/sweeps/transfer.yaml")
    sweep.add_argument("--out", type=_path, help="sweep directory to create (default: runs/sweep-<name>-<time>)")
    schema = sub.add_parser("schema", help="print the config's JSON Schema (or the sweep file's, or a reference page)")
    schema.add_argument("--sweep", action="store_true", help="the schema of kt_swarm's sweep files instead")
    schema.add_argument("--markdown", action="store_true", help="the reference page (markdown) made from the schema")
    for command in (run, sweep):
        command.add_argument("--engine", choices=["local", "ray"], default="ray",
                             help="ray: one Ray actor per participant (default); local: all in one process")
        command.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a private local instance)")
    for command in (run, report, sweep, schema):
        loudness = command.add_mutually_exclusive_group()
        loudness.add_argument("-q", "--quiet", action="store_true", help="warnings, errors and the final table only")
        loudness.add_argument("-v", "--verbose", action="store_true", help="debug logs, and actors' output and progress bars")
    return parser


def _report(args: argparse.Namespace) -> int:
    from kt_swarm.report import write_comparison, write_report

    if len(args.runs) == 1 and not args.out:
        paths = write_report(args.runs[0])
    else:
        paths = write_comparison(args.runs, args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    print("\n".join(str(p) for p in paths))
    return 0


def _schema(args: argparse.Namespace) -> int:
    from kt_swarm.schema import render

    print(render(sweep=args.sweep, markdown=args.markdown), end="")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from kt_swarm.sweep import sweep

    out = args.out or Path("runs") / f"sweep-{Path(args.sweep).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = sweep(args.sweep, out, args.engine, args.address)
    print(Path(out, "sweep.md").read_text())
    if results["best"] is None:
        raise UserError(f"no trial of the sweep finished (see {out}/sweep.md)")
    return 0


def _run(args: argparse.Namespace) -> int:
    import yaml

    from kt_swarm.config import to_dict
    from kt_swarm.rundir import is_resumable

    if args.fork:
        if args.config or args.resume or args.dry_run:
            raise UserError("--fork starts from RUN_DIR's own config.yaml: give no CONFIG, --resume or --dry-run")
        from kt_swarm.fork import prepare_fork

        out = Path(args.out or Path("runs") / f"{Path(args.fork).name}-fork-{time.strftime('%Y%m%d-%H%M%S')}")
        cfg, run_dir = prepare_fork(Path(args.fork), args.overrides + args.assignments, out)
    else:  # the same opening as kt_swarm.run's, so the two cannot drift apart
        from kt_swarm.api import open_run

        cfg, run_dir, out = open_run(args.config or None, args.overrides + args.assignments, args.out, args.resume)
    from kt_swarm.coordinator import run
    from kt_swarm.summary import format_table

    if args.dry_run:
        _check_run(cfg, out if args.resume else None)
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    try:
        with run_dir:
            summary = run(cfg, run_dir, args.engine, args.address)
    except KeyboardInterrupt:
        if is_resumable(out):
            print(f"kt-swarm: interrupted; continue with: kt-swarm run --resume {out}", file=sys.stderr)
            return 130
        raise
    print(format_table(summary))
    print(f"run directory: {out}")
    for offline in sorted(Path(out).glob("wandb/offline-run-*")):
        log.info("W&B logged offline; upload with: wandb sync %s", offline)
    return 0


def _check_run(cfg, resume_dir: Path | None) -> None:
    """What --dry-run checks beyond the config itself: the model names, and a resumable checkpoint."""
    from kt_swarm.checkpoint import Checkpoints, config_digest
    from kt_swarm.config import to_dict
    from kt_swarm.models import check_model_name

    for spec in cfg.participants:
        check_model_name(spec)
    if resume_dir is not None:
        names = [p.name for p in cfg.participants]
        ckpt = Checkpoints(resume_dir / "checkpoints", config_digest(to_dict(cfg)), names, cfg.checkpoint.keep)
        if ckpt.latest is not None:
            for _ in ckpt.load_set(ckpt.latest)[1]:  # every file read and checked
                pass
            log.info("would resume from checkpoint %s", ckpt.latest)


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C: checkpoints are kept, a run without any is removed
    raise KeyboardInterrupt


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("kt-swarm: %(message)s"))
    logger = logging.getLogger("kt_swarm")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":  # KEY=VALUE overrides may also come after the options (wandb agent's ${args})
        args.assignments += [a for a in extra if "=" in a and not a.startswith("-")]
        extra = [a for a in extra if a not in args.assignments]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return {"report": _report, "sweep": _sweep, "run": _run, "schema": _schema}[args.command](args)
    except UserError as e:
        print(_error_line(str(e)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kt-swarm: interrupted; the run directory was not written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
