"""An Optuna study's storage, shared by experiments.py's processes (on one machine or several): its database
opened with heartbeats (a ConfigError, one paragraph, when the URL's driver is missing or its server cannot
be reached), an existing study found without creating anything, and the trials of processes that died queued again.

    storage, recorded = studies.find_study(url, name)   # (None, None): no study (and no file) yet
    studies.requeue_orphans(study, lock_path)           # this machine's dead trials, queued to resume

PostgreSQL needs its driver: pip install -r requirements-postgres.txt (docs/experiments.md).
"""
import socket
import time
import warnings
from pathlib import Path

from fma_genres.runtime.errors import ConfigError
from fma_genres.runtime.locks import FileLock, alive

# A trial whose process sent no heartbeat for twice this is queued again (other machines' trials; this
# machine's are queued at once when their processes are gone, see requeue_orphans).
HEARTBEAT_SECONDS = 60
# How to install the driver of a database URL, by the module SQLAlchemy failed to import (its default
# driver for postgresql:// in SQLAlchemy 2.1 is psycopg 3); other modules: pip install <module>.
DRIVER_INSTALL = {"psycopg": "pip install -r requirements-postgres.txt", "MySQLdb": "pip install mysqlclient"}
# A main.py whose experiments.py died got SIGTERM (child_processes) and is saving last.pt: waited for this
# long before its trial is queued again (else it is left to the heartbeat).
SAVING_SECONDS = 60


def open_storage(url):
    """Optuna's storage at ``url``, or one paragraph on why it cannot be opened (which URL, which package or
    server, which command)."""
    import optuna
    import sqlalchemy

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental since 2.8
    try:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
        # a dead process's trial (no heartbeat for 2 intervals) is queued again with its user attributes (out_dir)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
            engine_kwargs={"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {})
    except sqlalchemy.exc.ArgumentError as error:  # not a URL, or a database SQLAlchemy has no dialect for
        raise ConfigError(f"--storage={url} is not a database URL SQLAlchemy can use ({error}). Give e.g. "
                          f"postgresql://user@host/optuna or sqlite:///path/study.db.") from None
    except ImportError as error:
        module = getattr(error.__cause__, "name", None) or "?"
        raise ConfigError(f"the study's database {shown} needs a driver that is not installed (Python module "
                          f"{module!r}). Install it with `{DRIVER_INSTALL.get(module, f'pip install {module}')}`, "
                          f"then rerun.") from None
    except sqlalchemy.exc.OperationalError as error:  # no server there, wrong credentials, no such database
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise ConfigError(f"cannot reach the study's database {shown} ({reason}). Check that its server runs and "
                          f"accepts connections from this machine with the URL's user, password and database (for "
                          f"PostgreSQL, `psql '{shown}'` tries the same), then rerun.") from None


def find_study(url, name):
    """(storage, main.py arguments recorded in study ``name``), (storage, None) when there are none, or
    (None, None) when the default SQLite file does not exist: nothing is created for a command that may
    yet be refused."""
    import sqlalchemy

    path = url.startswith("sqlite") and sqlalchemy.engine.make_url(url).database
    if path and not Path(path).is_file():
        return None, None
    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return storage, None
    return storage, storage.get_study_user_attrs(study_id).get("main_args")  # None: created by other means


def requeue_orphans(study, lock_path):
    """Queue again at once this machine's running trials whose experiments.py ended without a word (kill -9,
    a crash), once their main.py has saved last.pt and exited: each resumes from there. Another machine's
    trial waits until its heartbeat is stale (2 x HEARTBEAT_SECONDS)."""
    import optuna

    host = socket.gethostname()
    with FileLock(lock_path):  # one process of this machine requeues each trial
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            owner = trial.user_attrs
            if "pid" not in owner or owner["host"] != host or alive(owner["pid"]) or not ended(owner.get("main_pid")):
                continue
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"out_dir": owner["out_dir"]})
            print(f"trial {trial.number}: its processes ended without a word; queued again, to resume from "
                  f"{owner['out_dir']}/last.pt", flush=True)


def ended(pid, seconds=SAVING_SECONDS):
    """Whether process ``pid`` (None: never started) has ended, waiting up to ``seconds`` for it."""
    deadline = time.monotonic() + seconds
    while pid and alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
