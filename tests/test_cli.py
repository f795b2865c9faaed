"""The `mongoose` command's config-error and usage paths (mongoose/cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mongoose import cli

ROOT = Path(__file__).resolve().parent.parent


def mongoose(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "mongoose.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("command", ["foreground", "start"])
def test_invalid_config_exits_1_with_message(tmp_path, command):
    """A config that does not validate prints file, key and expectation and exits 1."""
    path = tmp_path / "bad.toml"
    path.write_text('[general]\nloglevel = "loud"\n')
    result = mongoose(command, "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"mongoose: {path}: general.loglevel: expected one of ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_missing_config_exits_1(tmp_path):
    """A --config path that does not exist is reported and exits 1."""
    result = mongoose("foreground", "--config", "nope.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "mongoose: nope.toml: config file not found\n"


def test_toml_syntax_error_exits_1(tmp_path):
    """A TOML syntax error is reported with its line and exits 1."""
    (tmp_path / "bad.toml").write_text("[general\n")
    result = mongoose("foreground", "--config", "bad.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert "bad.toml: invalid TOML" in result.stderr
    assert "line 1" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("foreground", "--no-such-option"),
        ("foreground", "--log-format", "xml"),
        ("foreground", "--config"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args):
    """Missing or unknown commands and bad options are usage errors, exit code 2."""
    result = mongoose(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: mongoose" in result.stderr


def test_help_exits_0_and_lists_start(tmp_path):
    """--help exits 0 and says that start is, for now, foreground."""
    top = mongoose("--help", cwd=tmp_path)
    assert top.returncode == 0
    assert "in the background" in top.stdout
    start = mongoose("start", "--help", cwd=tmp_path)
    assert start.returncode == 0
    assert "--config" in start.stdout
    assert "--log-format" in start.stdout


def test_default_config_prefers_checkout_copy(tmp_path, monkeypatch):
    """Without --config, config/mongooseim.toml in the working directory is used if present."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "mongooseim.toml").write_text('[general]\nworkers = 7\n')
    monkeypatch.chdir(tmp_path)
    assert cli.load_config(None).general.workers == 7


def test_default_config_falls_back_to_packaged_copy(tmp_path, monkeypatch):
    """Without --config and no checkout config, the copy shipped in the package is used."""
    monkeypatch.chdir(tmp_path)
    cfg = cli.load_config(None)
    assert cfg.general.hosts == ("localhost",)
    assert Path(cfg.source).parent.name == "default_config"


def test_keys_generate_writes_a_private_key_file_and_refuses_to_overwrite(tmp_path):
    """`mongoose keys generate` writes a loadable 0600 key file; a second run needs --force."""
    import stat
    import subprocess
    import sys

    from otp import curve

    target = tmp_path / "cluster.keys"
    command = [sys.executable, "-m", "mongoose", "keys", "generate", "--output", str(target)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert first.returncode == 0 and first.stdout.strip() == str(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    keys = curve.load(target)
    again = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "--force" in again.stderr
    forced = subprocess.run([*command, "--force"], capture_output=True, text=True, timeout=30)
    assert forced.returncode == 0 and curve.load(target).public != keys.public
