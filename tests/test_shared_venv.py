"""scripts/_env.sh: one .venv for scripts/serve, test, bench and ledger, installed once, reinstalled exactly when
the dependency declarations change.

The shell function runs for real, in a copy of the project's scripts and setup files, against a stand-in venv
whose ``bin/python`` records what it is asked to do instead of installing anything (so these tests take
milliseconds, not the minute a real install takes; ``scripts/_env.sh`` itself is not changed for them).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import _deps  # noqa: E402

FAKE_PYTHON = """#!/bin/sh
# A stand-in for the venv's python: log the call; fail installing the project when told to.
echo "$*" >> "{log}"
case "$*" in
  *" -e "*) [ -f "{fail_flag}" ] && exit 1; [ -f "{slow_flag}" ] && sleep 1 ;;
esac
exit 0
"""

FAKE_BASE_PYTHON = """#!/bin/sh
# A stand-in for python3: `-m venv DIR` makes a stand-in venv; anything else runs the real interpreter.
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" && cp "{fake_python}" "$3/bin/python" && echo "venv $3" >> "{log}"
  exit 0
fi
exec "{real_python}" "$@"
"""


class Project:
    """A copy of the project's install-relevant files, with a stand-in interpreter."""

    def __init__(self, root: Path) -> None:
        self.root = root / "project"
        (self.root / "scripts").mkdir(parents=True)
        for name in ("scripts/_env.sh", "scripts/_deps.py", "setup.cfg", "pyproject.toml"):
            shutil.copy(REPO_ROOT / name, self.root / name)
        self.venv = root / "venv"
        self.log = root / "calls.log"
        self.fail_flag = root / "fail-installs"
        self.fake_python = root / "fake-python"
        self.slow_flag = root / "slow-installs"
        self.fake_python.write_text(FAKE_PYTHON.format(log=self.log, fail_flag=self.fail_flag,
                                                       slow_flag=self.slow_flag))
        self.base_python = root / "python3"
        self.base_python.write_text(FAKE_BASE_PYTHON.format(fake_python=self.fake_python, log=self.log,
                                                            real_python=sys.executable))
        for script in (self.fake_python, self.base_python):
            script.chmod(script.stat().st_mode | stat.S_IXUSR)

    def command(self, *calls: str) -> tuple[list[str], dict[str, str]]:
        script = f'source "{self.root}/scripts/_env.sh"\n' + "\n".join(calls or ("ensure_venv",))
        return ["bash", "-c", script], {**os.environ, "LEDGER_VENV": str(self.venv), "PYTHON": str(self.base_python)}

    def ensure(self, *calls: str) -> subprocess.CompletedProcess:
        """Source _env.sh and run each ``ensure_venv ...`` call in one shell, as scripts/test etc. do."""
        command, env = self.command(*calls)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def installs(self) -> list[str]:
        return [call for call in self.calls() if " -e " in f" {call} "]

    def edit(self, path: str, old: str, new: str) -> None:
        file = self.root / path
        text = file.read_text()
        assert old in text, (path, old)
        file.write_text(text.replace(old, new, 1))


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


def test_the_first_run_creates_the_venv_and_installs_every_extra_once(project):
    done = project.ensure("ensure_venv", "ensure_venv test", "ensure_venv bench", "ensure_venv")
    assert done.returncode == 0, done.stderr
    assert project.calls()[0] == f"venv {project.venv}"
    extras = ",".join(_deps.extras(REPO_ROOT))
    assert {"test", "bench"} <= set(extras.split(","))
    assert project.installs() == [f"-m pip install --quiet --disable-pip-version-check -e {project.root}[{extras}]"]
    assert (project.venv / ".ledger-installed").read_text().strip() == _deps.dependency_hash(project.root)


def test_switching_between_the_scripts_never_reinstalls(project):
    assert project.ensure().returncode == 0
    # scripts/serve, scripts/test, scripts/bench and scripts/ledger in turn, each its own process.
    for call in ("ensure_venv", "ensure_venv test", "ensure_venv bench", "ensure_venv"):
        assert project.ensure(call).returncode == 0
    assert len(project.installs()) == 1


@pytest.mark.parametrize(("path", "old", "new"), [
    ("setup.cfg", "install_requires =\n", "install_requires =\n    itsdangerous>=2\n"),
    ("setup.cfg", "test =\n", "test =\n    pytest-xdist>=3\n"),
    ("setup.cfg", "bench =\n", "docs =\n    mkdocs>=1\nbench =\n"),
    ("setup.cfg", "python_requires = >=3.11", "python_requires = >=3.12"),
    ("setup.cfg", "ledger = ledger.console:main", "ledger = ledger.console:main\n    ledger2 = ledger.console:main"),
    ("pyproject.toml", 'requires = ["setuptools>=61", "wheel"]', 'requires = ["setuptools>=70", "wheel"]'),
])
def test_a_change_to_the_dependencies_reinstalls_once(project, path, old, new):
    assert project.ensure().returncode == 0
    project.edit(path, old, new)
    assert project.ensure("ensure_venv", "ensure_venv test").returncode == 0
    assert len(project.installs()) == 2
    if "docs =" in new:
        assert project.installs()[-1].endswith("[bench,docs,test]")


@pytest.mark.parametrize(("path", "old", "new"), [
    ("setup.cfg", "description = ", "description = Now with more words. "),
    ("setup.cfg", "timeout = 300", "timeout = 600"),
    ("setup.cfg", "markers =\n", "markers =\n    flaky: may fail\n"),
    ("setup.cfg", "[options]\n", "# a comment about the options\n[options]\n"),
    ("setup.cfg", "    pytest>=8\n", "    pytest>=8   \n"),
])
def test_a_change_that_installs_nothing_new_reinstalls_nothing(project, path, old, new):
    assert project.ensure().returncode == 0
    before = _deps.dependency_hash(project.root)
    project.edit(path, old, new)
    assert _deps.dependency_hash(project.root) == before
    assert project.ensure().returncode == 0
    assert len(project.installs()) == 1


def test_a_failed_install_leaves_no_stamp_and_the_next_run_tries_again(project):
    project.fail_flag.touch()
    failed = project.ensure()
    assert failed.returncode != 0
    assert not (project.venv / ".ledger-installed").exists()
    project.fail_flag.unlink()
    assert project.ensure().returncode == 0
    assert len(project.installs()) == 2
    assert (project.venv / ".ledger-installed").exists()


def test_the_stamps_of_the_old_per_extras_layout_are_replaced(project):
    assert project.ensure().returncode == 0
    (project.venv / ".ledger-installed").unlink()
    for extras in ("test", "bench", ""):
        (project.venv / f".ledger-installed-{extras}").write_text("old\n")
    assert project.ensure().returncode == 0
    assert sorted(path.name for path in project.venv.glob(".ledger-installed*")) == [".ledger-installed"]


def test_every_script_uses_the_shared_environment_and_nothing_else():
    for name in ("serve", "test", "bench", "ledger"):
        text = (REPO_ROOT / "scripts" / name).read_text()
        assert 'source "$(dirname "$0")/_env.sh"' in text, name
        assert re.search(r"^ensure_venv$", text, re.MULTILINE), name
        assert "pip install" not in text, name


def test_two_scripts_started_at_once_install_once(project):
    if shutil.which("flock") is None:
        pytest.skip("flock (util-linux) is not installed: _env.sh then installs without a lock")
    assert project.ensure().returncode == 0  # the venv exists; now the dependencies change under two scripts
    project.edit("setup.cfg", "install_requires =\n", "install_requires =\n    itsdangerous>=2\n")
    project.slow_flag.touch()  # each install takes a second: without the lock both would run one
    command, env = project.command()
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    second = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    assert (first.wait(timeout=60), second.wait(timeout=60)) == (0, 0)
    assert len(project.installs()) == 2  # the first run's, and one for the change
