"""Fetch Pykka's own test suite and point it at our LoopActor.

Usage: ``python tests/pykka_suite/prepare.py DEST`` (``./dev test`` does this).

The suite is taken at test time from the source distribution of the Pykka version that
is installed (pinned in pyproject.toml), downloaded with pip, and never committed. It is
unpacked as the package ``DEST/pykka_tests`` (renamed from ``tests`` so it can run in one
pytest session beside our own ``tests/``), and its conftest gets an appended block,
read from ``conftest_tail.py`` beside this file, that makes the ``runtime`` fixture
yield our runtime and skips, by name and with a reason, the tests listed in ``skips.py``.

Re-running is cheap: a stamp file records the version prepared.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prepare(dest: Path) -> Path:
    version = importlib.metadata.version("pykka")
    package = dest / "pykka_tests"
    stamp = dest / "prepared-version"
    tail = (HERE / "conftest_tail.py").read_text().replace("@SKIPS_FILE@", str(HERE / "skips.py"))
    if stamp.exists() and stamp.read_text() == version + "\n" + tail and package.exists():
        return package
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", f"pykka=={version}", "-d", tmp],
            check=True,
        )
        (archive,) = Path(tmp).glob("pykka-*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        source = Path(tmp) / f"pykka-{version}" / "tests"
        if package.exists():
            shutil.rmtree(package)
        package.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        renamed = re.sub(r"\b(from|import) tests\b", r"\1 pykka_tests", text)
        if renamed != text:
            path.write_text(renamed)
    conftest = package / "conftest.py"
    conftest.write_text(conftest.read_text() + "\n\n" + tail)
    stamp.write_text(version + "\n" + tail)
    return package


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: prepare.py DEST")
    print(prepare(Path(sys.argv[1])))
