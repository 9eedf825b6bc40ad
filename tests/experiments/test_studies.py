"""experiments.py tune under faults, on the tiny FMA-format dataset (CNN1D, 96 frames): a `kill -9` of
tune ends its main.py trials (--parallel=2) and the next run resumes them; two processes on one study,
one killed mid-trial, complete it without losing or repeating a trial, on SQLite and on a real
PostgreSQL server started here; database URLs whose driver is missing or whose server is unreachable."""
import csv
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

import experiments
from conftest import clean_env, ends_within

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4
ENDED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def tune_argv(data_dir, folder, *extra):
    (folder / "space.py").write_text("SPACE = {'lr': [3e-3, 1e-3]}\n")
    return ["tune", f"--data_dir={data_dir}", "--model=cnn1d", "--n_frames=96", "--download=False",
            "--wandb_mode=disabled", "--num_workers=0", "--faithful=False", "--batch_size=2", f"--epochs={EPOCHS}",
            f"--space={folder / 'space.py'}", f"--dir={folder}", "--name=test", *extra]


def start_tune(argv, folder, tag):
    """experiments.py as its own process, its output in <folder>/<tag>.log."""
    (folder / tag).mkdir()
    with open(folder / f"{tag}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "experiments.py", *argv], cwd=ROOT, env=clean_env(folder / tag),
                                stdout=log, stderr=subprocess.STDOUT)


def running_trials(url, owner, trained):
    """out_dir -> main.py's pid of the study's running trials whose main.py runs (of process ``owner``, or
    any: None), and has trained an epoch if ``trained``."""
    try:
        trials = optuna.load_study(study_name="test", storage=url).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    except KeyError:  # not created yet
        return {}
    return {t.user_attrs["out_dir"]: t.user_attrs["main_pid"] for t in trials
            if "main_pid" in t.user_attrs and owner in (None, t.user_attrs["pid"])
            and (not trained or (Path(t.user_attrs["out_dir"]) / "history.csv").exists())}


def wait_for_trials(url, process, count, owner=None, trained=True, seconds=300):
    """running_trials once there are ``count`` of them, while ``process`` runs."""
    deadline = time.monotonic() + seconds
    while len(trials := running_trials(url, owner, trained)) < count:
        assert process.poll() is None, f"experiments.py ended before {count} trials ran (trained: {trained})"
        assert time.monotonic() < deadline, f"fewer than {count} trials ran in {seconds} s (trained: {trained})"
        time.sleep(0.1)
    return trials


def frozen_after_an_epoch(url, process, count, owner=None, seconds=300):
    """Like wait_for_trials, but each trial's main.py is stopped (SIGSTOP) as soon as it has trained an
    epoch, so however fast this CPU trains, the trials are still mid-run when the test kills their parent."""
    frozen, deadline = {}, time.monotonic() + seconds
    while len(frozen) < count:
        for out_dir, pid in running_trials(url, owner, trained=True).items():
            if out_dir not in frozen:
                os.kill(pid, signal.SIGSTOP)
                frozen[out_dir] = pid
        assert process.poll() is None, f"experiments.py ended before {count} trials ran"
        assert time.monotonic() < deadline, f"fewer than {count} trials trained an epoch in {seconds} s"
        time.sleep(0.02)
    return frozen


def kill_9_then_thaw(process, trials):
    """kill -9 experiments.py, then let its frozen trials run on to meet the SIGTERM its death sent them."""
    kill_9(process)
    for pid in trials.values():
        os.kill(pid, signal.SIGCONT)


def epochs_of(out_dir):
    with open(Path(out_dir) / "history.csv", newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def kill_9(process):
    process.kill()
    process.wait()


@pytest.mark.slow
def test_a_killed_tune_ends_its_trials_and_the_next_run_resumes_them(fma_small, tmp_path, capsys):
    argv = tune_argv(fma_small, tmp_path, "--trials=2", "--parallel=2")  # trials from Optuna's worker threads
    url = f"sqlite:///{tmp_path / 'study.db'}"
    process = start_tune(argv, tmp_path, "first")
    trials = frozen_after_an_epoch(url, process, 2)
    killed = [out_dir for out_dir in trials if not (Path(out_dir) / "metrics.json").exists()]
    kill_9_then_thaw(process, trials)
    assert len(killed) == 2, killed
    assert all(ends_within(pid, 60) for pid in trials.values())  # their SIGTERM: they saved last.pt and stopped
    for out_dir in killed:
        assert (Path(out_dir) / "last.pt").is_file() and not (Path(out_dir) / "metrics.json").exists()
    assert experiments.run(argv) == 0  # the same command: the trials are queued again at once and resumed
    assert "queued again, to resume from" in capsys.readouterr().out
    complete = optuna.load_study(study_name="test", storage=url).get_trials(states=ENDED)
    assert sorted(t.user_attrs["out_dir"] for t in complete) == sorted(trials)
    for out_dir in killed:
        assert "resuming after epoch" in (Path(out_dir) / "main.log").read_text()
        assert epochs_of(out_dir) == list(range(1, EPOCHS + 1))  # continued, each epoch once
    assert not list(tmp_path.glob("trial_*/last.pt"))  # finished trials keep best.pt only


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """The URL of a PostgreSQL server of this module's own on 127.0.0.1 (initdb and pg_ctl from Debian's
    postgresql package), its cluster in a temporary folder; as root it runs as the postgres user, since
    initdb refuses root (and that user cannot enter pytest's root-only tmp_path, hence tempfile)."""
    initdb = shutil.which("initdb") or max(map(str, Path("/usr/lib/postgresql").glob("*/bin/initdb")), default=None)
    if not initdb:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql; .ci/run does)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install -r requirements-postgres.txt")
    as_user = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no postgres user to run initdb as (it refuses root)")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder, port = Path(tempfile.mkdtemp(prefix="fma-postgres-")), free_port()
    if as_user:
        shutil.chown(folder, "postgres")
    pg_ctl = [*as_user, str(Path(initdb).with_name("pg_ctl")), "-D", str(folder / "data")]

    def run(*command):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"

    try:
        run(*as_user, initdb, "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(*pg_ctl, "-l", str(folder / "server.log"), "-w", "start",
            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_processes_complete_one_study_when_one_is_killed_mid_trial(fma_small, tmp_path, request, database):
    url = request.getfixturevalue("postgres") if database == "postgresql" else f"sqlite:///{tmp_path / 'study.db'}"
    argv = tune_argv(fma_small, tmp_path, "--trials=2", f"--storage={url}")
    first = start_tune(argv, tmp_path, "first")
    wait_for_trials(url, first, 1, trained=False)  # the second's trial starts later, so it runs past the kill
    second = start_tune(argv, tmp_path, "second")
    wait_for_trials(url, second, 1, owner=second.pid, trained=False)
    trials = frozen_after_an_epoch(url, first, 1, owner=first.pid)
    (out_dir, main_pid), = trials.items()
    assert not (Path(out_dir) / "metrics.json").exists()
    kill_9_then_thaw(first, trials)
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert ends_within(main_pid, 0)
    trials = optuna.load_study(study_name="test", storage=url).trials
    finished = [t.user_attrs["out_dir"] for t in trials if t.state in ENDED]
    assert len(finished) >= 2 and not [t for t in trials if not t.state.is_finished()]  # none left running or waiting
    assert len(set(finished)) == len(finished) and out_dir in finished  # none counted twice, the killed one resumed
    assert "resuming after epoch" in (Path(out_dir) / "main.log").read_text()
    for folder in finished:
        assert epochs_of(folder) == list(range(1, len(epochs_of(folder)) + 1))  # each epoch once


def test_a_database_url_whose_driver_is_missing_says_which_package_to_install(tmp_path):
    with pytest.raises(SystemExit) as info:
        experiments.run(["tune", "--model=cnn1d", "--storage=mysql://me:secret@127.0.0.1/optuna", f"--dir={tmp_path / 's'}"])
    assert "mysql://me:***@127.0.0.1/optuna" in info.value.code and "pip install mysqlclient" in info.value.code
    assert "secret" not in info.value.code and not (tmp_path / "s").exists()


def test_an_unreachable_database_server_is_one_paragraph_naming_the_url(tmp_path):
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install -r requirements-postgres.txt")
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    with pytest.raises(SystemExit) as info:
        experiments.run(["tune", "--model=cnn1d", f"--storage={url}", f"--dir={tmp_path / 's'}"])
    assert f"cannot reach the study's database {url}" in info.value.code and "psql" in info.value.code


def test_a_report_on_a_study_that_does_not_exist_creates_nothing(tmp_path):
    with pytest.raises(SystemExit, match="there is no study tune_cnn1d"):
        experiments.run(["tune", "--model=cnn1d", "--report", f"--dir={tmp_path / 's'}"])
    assert not (tmp_path / "s").exists()
