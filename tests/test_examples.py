import subprocess
import sys

from support import ROOT


def test_own_training_loop_example_runs():
    proc = subprocess.run([sys.executable, "examples/own_training_loop.py", "--steps", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "taught: resnet" in proc.stdout and "vit: test accuracy" in proc.stdout
