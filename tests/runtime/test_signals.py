"""Signals as clusters and shells deliver them: the tests that send SIGINT pass however the suite was
started, including by a parent that ignores SIGINT (nohup, `cmd &` in a script, job runners).

    python -m pytest tests/runtime/test_signals.py -q
"""
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIGNAL_TESTS = ["tests/test_models_utils.py::test_ctrl_c_during_save_completes_the_file_then_interrupts",
                "tests/test_main_run.py::test_ctrl_c_saves_and_exits_cleanly_with_a_resume_hint"]


def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
def test_the_ctrl_c_tests_pass_when_the_suite_starts_with_sigint_ignored():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SIGNAL_TESTS], cwd=ROOT,
                            preexec_fn=ignore_sigint, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 passed" in result.stdout


def test_main_keeps_a_sigint_its_parent_ignored(tmp_path):
    """Standard Unix behaviour: `main.py &` in a script must not start reacting to Ctrl-C of the shell."""
    code = "import signal, main; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, preexec_fn=ignore_sigint,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr[-2000:]
