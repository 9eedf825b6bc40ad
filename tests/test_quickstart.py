"""Tests for quickstart.sh's set-up, run as a real subprocess with a tiny requirements file.

The requirements files hold only comments, or a local path, so pip needs no package index and each
environment takes seconds (Python's venv module and its bundled pip, no torch). The tests' pytest
reaches the tiny environment through PYTHONPATH, so the test verb's `python -m pytest` really runs
there. Run: python -m pytest tests/test_quickstart.py -q
"""
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "quickstart.sh"
PYTHON = os.path.realpath(sys.executable)  # the real interpreter behind any virtual environment
VERSION = "%d.%d" % sys.version_info[:2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="quickstart.sh is for Linux")


def python_bin(tmp_path):
    """A PATH folder whose python3 is the interpreter running these tests."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    if not (folder / "python3").exists():
        (folder / "python3").symlink_to(PYTHON)
    return folder


def quickstart(tmp_path, *args, requirements, path=None, **env):
    """Run quickstart.sh with its environment in tmp_path/venv and the given requirements file."""
    env = {**os.environ, "FMA_VENV": str(tmp_path / "venv"), "FMA_REQUIREMENTS": str(requirements),
           "PATH": path or f"{python_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": sysconfig.get_path("purelib"), **env}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


def probe_test(tmp_path, passes):
    """A test file that checks it runs in quickstart's environment, and fails on demand."""
    path = tmp_path / f"test_probe_{passes}.py"
    path.write_text("import sys\n\ndef test_probe():\n"
                    f"    assert sys.prefix == {str(tmp_path / 'venv')!r}\n    assert {passes}\n")
    return path


def test_help_lists_both_verbs():
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "test [ARGS]" in out and "FMA_VENV" in out


def test_the_environment_is_reused_while_the_requirements_are_unchanged_and_rebuilt_when_they_change(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing to install\n")
    venv = tmp_path / "venv"

    first = quickstart(tmp_path, "test", str(probe_test(tmp_path, True)), "-q", requirements=requirements)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "building" in first.stderr and "1 passed" in first.stdout
    (venv / "kept").write_text("made after the install")

    failing = quickstart(tmp_path, "test", str(probe_test(tmp_path, False)), "-q", requirements=requirements)
    assert failing.returncode == 1, "pytest's exit code must come through"
    assert "reusing" in failing.stderr and "1 failed" in failing.stdout
    assert (venv / "kept").exists()

    requirements.write_text("# nothing to install, still\n")
    changed = quickstart(tmp_path, "test", str(probe_test(tmp_path, True)), "-q", requirements=requirements)
    assert changed.returncode == 0, changed.stderr + changed.stdout
    assert "building" in changed.stderr and "1 passed" in changed.stdout
    assert not (venv / "kept").exists(), "a changed requirements file must rebuild from scratch"


def test_a_failed_install_is_never_taken_as_complete(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{tmp_path / 'no_such_package-1.0-py3-none-any.whl'}\n")
    for _ in range(2):
        run = quickstart(tmp_path, "test", requirements=requirements)
        assert run.returncode != 0
        assert "building" in run.stderr and "reusing" not in run.stderr
        assert (tmp_path / "venv" / ".quickstart").read_text() == "", "marked complete after a failed install"


def test_a_python_without_ensurepip_stops_before_making_the_environment(tmp_path):
    """Debian and Ubuntu ship ensurepip in python3.X-venv; without it `python3 -m venv` leaves a half-made
    environment. A copy of this interpreter next to a standard library of links without ensurepip is
    such a Python (Python finds its library beside its executable)."""
    stdlib = pathlib.Path(sysconfig.get_path("stdlib"))
    home = tmp_path / "python_home"
    (home / "bin").mkdir(parents=True)
    shutil.copy2(PYTHON, home / "bin" / "python3")
    lib = home / stdlib.relative_to(sys.base_prefix)
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "ensurepip":
            (lib / entry.name).symlink_to(entry)
    for entry in stdlib.parent.iterdir():  # e.g. libpython, where the executable links to it
        if entry != stdlib:
            (lib.parent / entry.name).symlink_to(entry)
    made = subprocess.run([str(home / "bin" / "python3"), "-m", "venv", str(tmp_path / "probe")], capture_output=True)
    assert made.returncode != 0, "the construction must reproduce the missing module"

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    run = quickstart(tmp_path, "test", requirements=requirements, path=f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert run.returncode == 1
    assert "venv module (ensurepip) is missing" in run.stderr
    fix = f"apt-get install python{VERSION}-venv" if shutil.which("apt-get") else f"Python {VERSION}'s venv"
    assert fix in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "venv").exists(), "no half-made environment"


def test_no_python3_names_the_install_command(tmp_path):
    """A PATH with the few tools the script needs before it looks for Python, and no Python."""
    folder = tmp_path / "nopython"
    folder.mkdir()
    for tool in ("dirname", "id", "apt-get"):
        if shutil.which(tool):
            (folder / tool).symlink_to(shutil.which(tool))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    run = quickstart(tmp_path, "demo", requirements=requirements, path=str(folder))
    assert run.returncode == 1
    fix = "apt-get install python3 python3-venv" if shutil.which("apt-get") else "Install Python 3.10 or newer"
    assert "no python3 found" in run.stderr and fix in run.stderr
    assert not (tmp_path / "venv").exists()


def test_a_folder_or_file_it_did_not_make_is_never_deleted(tmp_path):
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /somewhere\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    run = quickstart(tmp_path, "test", requirements=requirements)
    assert run.returncode == 1 and "was not made by quickstart.sh" in run.stderr
    assert (tmp_path / "venv" / "pyvenv.cfg").exists()
    run = quickstart(tmp_path, "test", requirements=requirements, FMA_VENV=str(requirements))
    assert run.returncode == 1 and "was not made by quickstart.sh" in run.stderr
    assert requirements.exists()


def test_a_missing_requirements_file_is_named(tmp_path):
    run = quickstart(tmp_path, "test", requirements=tmp_path / "absent.txt")
    assert run.returncode == 1 and f"requirements file {tmp_path / 'absent.txt'} not found" in run.stderr
    assert not (tmp_path / "venv").exists()
