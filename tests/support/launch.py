"""`kt-swarm` as a user runs it: a fresh interpreter (`python -m kt_swarm`), to its end or in the background,
or its main() in this process; and a script outside the package loaded as a module."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import signal
import subprocess
import sys
from pathlib import Path

from . import ROOT


def kt_swarm(*args, cwd=ROOT, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Run the CLI to its end; its output captured as text. env None: this process's environment (a test
    model's run wants helpers_env())."""
    return subprocess.run(
        [sys.executable, "-m", "kt_swarm", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env,
    )


def start_kt_swarm(*args, cwd=ROOT, env=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   new_session: bool = False) -> subprocess.Popen:
    """Start the CLI and return at once: a run to wait on, signal or kill mid-way (text pipes by default).
    new_session: its own process group, so that os.killpg ends it with the private Ray instance it started."""
    return subprocess.Popen([sys.executable, "-m", "kt_swarm", *map(str, args)], cwd=cwd, stdout=stdout,
                            stderr=stderr, text=True, env=env, start_new_session=new_session)


def cli(argv: list[str], alarm: int = 0) -> tuple[int, str, str]:
    """kt_swarm.cli.main(argv) in this process: (exit code, stdout, stderr); argparse's own exits give their code.
    alarm: seconds after which SIGALRM ends the process (a hang fails instead of stalling); 0, none. The SIGTERM
    handler main() installs is put back."""
    from kt_swarm.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = signal.getsignal(signal.SIGTERM)
    if alarm:
        signal.alarm(alarm)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's own errors
                code = e.code
    finally:
        if alarm:
            signal.alarm(0)
        signal.signal(signal.SIGTERM, previous)
    return code, out.getvalue(), err.getvalue()


def load_script(path: Path):
    """A script outside the package (an example's prepare.py) as a module, to test its functions."""
    spec = importlib.util.spec_from_file_location(path.parent.name + "_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
