"""The `mongoose` command's config-error and usage paths (mongoose/cli.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

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


# -- log output: [general] log_format and log_file -------------------------------------------


@pytest.mark.timeout(60)
def test_log_file_that_cannot_be_opened_exits_1(tmp_path):
    """A log_file the node cannot open is reported with its path and reason, exit 1."""
    (tmp_path / "data" / "taken").mkdir(parents=True)
    path = tmp_path / "m.toml"
    path.write_text('[general]\ndata_dir = "data"\nlog_file = "taken"\n')
    result = mongoose("foreground", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "mongoose: cannot open the log file data/taken: Is a directory\n"


@pytest.mark.timeout(60)
def test_start_with_a_log_file_that_cannot_be_opened_exits_1_saying_why(tmp_path):
    """`start` reports a node that could not open its log file with the node's message."""
    (tmp_path / "data" / "taken").mkdir(parents=True)
    path = tmp_path / "m.toml"
    path.write_text('[general]\ndata_dir = "data"\nlog_file = "taken"\n')
    result = mongoose("start", "--config", str(path), "--timeout", "30", cwd=tmp_path)
    assert result.returncode == 1
    assert "the node exited with status 1 while starting" in result.stderr
    assert "mongoose: cannot open the log file data/taken: Is a directory" in result.stderr


def node_config(directory: Path, general: str) -> Path:
    """A config for a real node with two workers that binds nothing fixed."""
    path = directory / "mongooseim.toml"
    path.write_text(
        f'[general]\nnode_name = "logtest@localhost"\nworkers = 2\ndata_dir = "data"\n{general}'
        "[cluster]\nport = 0\n"
        '[[listen.c2s]]\nport = 0\nip_address = "127.0.0.1"\ntls.mode = "none"\n'
        "[auth.password]\nscram_iterations = 4096\n"
    )
    return path


class ForegroundNode:
    """`mongoose foreground` as a child; its stderr goes to a file the test can read."""

    def __init__(self, config: Path, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.stderr_path = config.parent / f"stderr{len(list(config.parent.glob('stderr*')))}"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mongoose", "foreground", "--config", str(config), *args],
                cwd=config.parent, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )

    def stop(self) -> None:
        """SIGTERM, and wait for a clean exit."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.stderr()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def whole_lines(path: Path) -> list[str]:
    """The complete lines of ``path`` so far (none if it does not exist yet)."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return []
    return data.split("\n")[:-1]


def json_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in whole_lines(path)]


@pytest.mark.timeout(90)
def test_node_and_workers_log_to_the_configured_file(tmp_path):
    """With general.log_file, the node and each of its worker processes append JSON lines
    (json being the default format) to that file, under data_dir; nothing goes to stderr."""
    config = node_config(tmp_path, 'log_file = "logs/node.log"\n')
    log_file = tmp_path / "data" / "logs" / "node.log"
    node = ForegroundNode(config)
    try:
        wait_until(
            lambda: node.proc.poll() is not None
            or any(e["what"] == "node_up" for e in json_events(log_file)),
            timeout=45, what=lambda: f"node_up in {log_file}; stderr: {node.stderr()}",
        )
        assert node.proc.poll() is None, node.stderr()
        node.stop()
    finally:
        node.kill()
    events = json_events(log_file)  # every line parses: whole lines only
    by_what: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_what.setdefault(event["what"], []).append(event)
    assert "config_loaded" in by_what
    [up] = by_what["node_up"]
    assert up["node"] == "logtest@localhost"
    workers_up = {e["worker"]: e["os_pid"] for e in by_what["worker_up"]}
    assert set(workers_up) == {1, 2}
    assert len({up["os_pid"], *workers_up.values()}) == 3  # three OS processes, one file
    assert {e["worker"] for e in by_what["worker_stopped"]} == {1, 2}
    assert "node_stopped" in by_what
    assert '"what"' not in node.stderr()


@pytest.mark.timeout(120)
def test_log_format_comes_from_the_config_unless_given(tmp_path):
    """general.log_format = "text" makes the node and its workers write text lines; an
    explicit --log-format json wins over the config."""
    config = node_config(tmp_path, 'log_format = "text"\nlog_file = "node.log"\n')
    log_file = tmp_path / "data" / "node.log"

    def whats() -> list[str]:
        return [line.split(" ")[2] for line in whole_lines(log_file) if line[:1].isdigit()]

    node = ForegroundNode(config)
    try:
        wait_until(lambda: node.proc.poll() is not None or "node_up" in whats(), timeout=45,
                   what=lambda: f"node_up in {log_file}; stderr: {node.stderr()}")
        node.stop()
    finally:
        node.kill()
    assert whats().count("worker_up") == 2
    assert not any(line.startswith("{") for line in whole_lines(log_file))
    text_lines = len(whole_lines(log_file))

    node = ForegroundNode(config, "--log-format", "json")
    try:
        wait_until(
            lambda: node.proc.poll() is not None
            or '"what":"node_up"' in "".join(whole_lines(log_file)[text_lines:]),
            timeout=45, what=lambda: f"node_up in {log_file}; stderr: {node.stderr()}",
        )
        node.stop()
    finally:
        node.kill()
    appended = [json.loads(line) for line in whole_lines(log_file)[text_lines:]]
    assert [e["what"] for e in appended].count("worker_up") == 2
    assert "node_stopped" in [e["what"] for e in appended]
