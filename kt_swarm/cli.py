"""kt-swarm: the command line. Bad input ends in one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from kt_swarm.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, code 2
        self.exit(2, f"kt-swarm: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kt-swarm", description="Many-to-many knowledge transfer between pretrained models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a swarm from a YAML config")
    run.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (dotted, list indices allowed: participants.0.lr=3e-4)")
    run.add_argument("--out", help="run directory to create (default: runs/<config>-<time>)")
    run.add_argument("--engine", choices=["local", "ray"], default="ray",
                     help="ray: one Ray actor per participant (default); local: all in this process")
    run.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a private local instance)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from kt_swarm.config import load_config
    from kt_swarm.rundir import RunDir

    cfg = load_config(args.config, args.overrides)
    out = args.out or Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    from kt_swarm.coordinator import format_table, run

    with RunDir(out) as run_dir:
        summary = run(cfg, run_dir, args.engine, args.address)
    print(format_table(summary))
    print(f"run directory: {out}")
    return 0


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C, so the partial run directory is removed
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    except UserError as e:
        print(f"kt-swarm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kt-swarm: interrupted; the run directory was not written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
