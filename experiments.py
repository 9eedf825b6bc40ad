"""Experiments over main.py: a hyperparameter search (Optuna), one configuration repeated over seeds,
and the ensemble of those seeds. Every trial and every seed is one ordinary main.py run (a subprocess,
the same code path as by hand) in its own out_dir; the config file and --key=value arguments are
main.py's, the fixed part of every run.

    python experiments.py tune --model=crnn --epochs=30 --trials=50           # runs/experiments/tune_crnn/
    python experiments.py tune configs/x.py --trials=50 --parallel=4          # 4 trials at once (one per GPU)
    python experiments.py tune --model=crnn --space=my_space.py --trials=20   # SPACE below, replaced
    python experiments.py tune --model=crnn --trials=50 --storage=postgresql://user@host/optuna  # many machines:
    #   pip install -r requirements-postgres.txt (the driver) on each
    python experiments.py tune --model=crnn --report                          # best trial, trials.csv, figures
    python experiments.py repeat --model=cnn1d --epochs=30 --seeds=0,1,2,3,4  # runs/experiments/repeat_cnn1d/
    python experiments.py tune --encoder=dasheng --epochs=20 --trials=30      # a probe: PROBE_SPACE (lr, head, ...)
    python experiments.py repeat configs/probe_dasheng_small.py --seeds=0,1,2 # runs/experiments/repeat_probe_dasheng/

tune: searches SPACE (a probe on an encoder: PROBE_SPACE) less the keys the fixed part sets (or --space's SPACE). The study lives in
<dir>/study.db (or --storage=URL), so rerunning continues it up to --trials finished trials, also from
several processes at once. A median pruner, fed each epoch's val_<select_metric> from history.csv,
stops hopeless trials with SIGTERM (main.py saves last.pt); so do Ctrl-C and SIGTERM, and the next run
resumes those trials. main.py runs end with experiments.py even after kill -9 (child_processes.py), and
the next run resumes their trials at once. A finished trial keeps best.pt, not last.pt (--keep_last).
Validation scores only choose.
repeat: one run per seed on one split, summary.csv/.md (mean, std, 95% Student-t interval, clipped to
the metric's range) and the seeds' ensemble (pre_trained_models.py --evaluate). Reruns skip finished
seeds and resume the rest.
README, "Experiments", says more.
"""
import logging
import os
import signal
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from fma_genres import configurator
from fma_genres.data import datasets
from fma_genres.experiments import main_runs, seed_summary, studies
from fma_genres.reporting import wandb_logging
from fma_genres.runtime import atomic
from fma_genres.runtime.errors import ConfigError
from fma_genres.runtime.figures import pyplot
from fma_genres.runtime.locks import FileLock

# The search space: key -> a list (categorical) or {"low", "high", "log"} (ints if both bounds are ints).
# A key fixed by the config file or a --key=value is left out; --space=FILE.py replaces it with FILE.py's SPACE.
SPACE = {
    "lr": {"low": 1e-5, "high": 1e-2, "log": True},
    "weight_decay": [0.0, 1e-5, 1e-4, 1e-3],
    "batch_size": [16, 32, 50, 64],
    "data_augmentation": [False, True],
    "model": ["cnn1d", "cnn2d", "crnn"],
}
# A probe on a pretrained encoder (main.py's encoder=dasheng|whisper|clap) searches its head instead of the CNN
# and SpecAugment, which a probe on cached embeddings does not have.
PROBE_SPACE = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": [0.0, 1e-5, 1e-4, 1e-3],
    "batch_size": [16, 32, 50, 64],
    "head": ["linear", "mlp"],
}
# A pretrained encoder fine-tuned with its probe (main.py's finetune_encoder=True) also searches the encoder's
# learning rate, which sits orders of magnitude below the probe's; a GPU's batch bounds its batch size.
FINETUNE_SPACE = {**PROBE_SPACE, "encoder_lr": {"low": 1e-6, "high": 1e-4, "log": True}, "batch_size": [8, 16, 32]}
# experiments.py's own options; every other --key=value is main.py's
OPTIONS = {"trials": 20, "parallel": 1, "space": "", "storage": "", "report": False, "keep_last": False,  # tune
           "seeds": "0,1,2",                                                          # repeat
           "name": "", "dir": ""}  # name: <command>_<model>; dir: runs/experiments/<name>
MANAGED = ("out_dir", "resume", "overwrite")  # each run's own, set here
# Median pruning from the 3rd trial on (2 finished ones give a median), from the first epoch.
PRUNER_STARTUP_TRIALS = 2
PREDICT_PY = Path(__file__).with_name("pre_trained_models.py")


def fail(message):
    """Stop the experiment with a one-paragraph message and exit status 1, no traceback."""
    raise SystemExit(f"error: {message}")


@lru_cache(maxsize=1)
def main_defaults():
    """main.py's CONFIG, read from its constants block (an entry point is run, never imported)."""
    return configurator.script_defaults(main_runs.MAIN_PY)


def main_config(overrides):
    """main.py's config for ``overrides``, resolved and checked as main.py resolves it."""
    return configurator.make_config(overrides, main_defaults())


class TrialError(Exception):
    """A trial whose main.py failed (its log says why); the study goes on."""


class Interrupted(Exception):
    """The experiment was asked to stop; the running trial is queued again, to resume from its last.pt."""


# -----------------------------------------------------------------------------
# tune: an Optuna study

def default_space(config):
    """The space searched when no --space is given: PROBE_SPACE for an encoder's probe, FINETUNE_SPACE for
    a fine-tuned encoder, else SPACE."""
    if config["encoder"] == "mel":
        return SPACE
    return FINETUNE_SPACE if config["finetune_encoder"] else PROBE_SPACE


def load_space(path, config):
    """default_space(config), or the SPACE dict defined by the Python file ``path``, checked against main.py's keys."""
    space = default_space(config)
    if path:
        namespace = {}
        try:
            exec(compile(Path(path).read_text(), path, "exec"), namespace)  # noqa: S102 -- the user's file
        except (OSError, SyntaxError) as error:
            fail(f"cannot read the search space {path} ({error}). Give a Python file defining SPACE = {{...}}.")
        space = namespace.get("SPACE")
    for key, choice in (space or {}).items():
        ranged = isinstance(choice, dict) and {"low", "high"} <= set(choice) and set(choice) <= {"low", "high", "log"}
        if key not in main_defaults() or key in MANAGED or not (ranged or isinstance(choice, list) and choice):
            fail(f"search space {path or 'SPACE'}: {key!r}: {choice!r} is not valid. Each key must be one of "
                 f"main.py's (not {', '.join(MANAGED)}), with a list of values or {{'low': .., 'high': .., 'log': ..}}.")
    if not space:
        fail(f"{path} defines no SPACE dict (key -> list of values or {{'low', 'high', 'log'}}).")
    return space


def fixed_keys(main_args):
    """main.py's keys that ``main_args`` fix -> where: "by <config file>" or "on the command line"."""
    config_file, overrides = configurator.split_arguments(main_args)
    from_file = configurator.read_config_file(config_file, main_defaults()) if config_file else {}
    return {**{key: f"by {config_file}" for key in from_file},
            **{key: "on the command line" for key in configurator.parse_overrides(overrides, main_defaults())}}


def search_space(space_file, main_args, config):
    """The keys a study searches: default_space(config) without the keys main_args fix, or --space's SPACE,
    which must not search a fixed key (the user wrote both: which one is meant is theirs to say)."""
    space, fixed = load_space(space_file, config), fixed_keys(main_args)
    if space_file:
        clashes = {}
        for key in [key for key in space if key in fixed]:
            clashes.setdefault(fixed[key], []).append(key)
        if clashes:
            fail(" ".join(f"{and_list(keys)} {'is' if len(keys) == 1 else 'are'} both fixed {where} and searched by "
                          f"{space_file}: drop one." for where, keys in clashes.items()))
        return space
    left = {key: choice for key, choice in space.items() if key not in fixed}
    if not left:
        name = next(name for name in ("SPACE", "PROBE_SPACE", "FINETUNE_SPACE") if globals()[name] is space)
        fail(f"nothing is left to search: every key of experiments.py's {name} "
             f"is fixed ("
             f"{', '.join(f'{key} {fixed[key]}' for key in space)}). Leave one of them unset, or search keys of "
             f"your choice with --space=FILE.py (a Python file defining SPACE = {{...}}).")
    return left


def and_list(words):
    """"a", "a and b", "a, b and c"."""
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def suggest(trial, space):
    """The trial's main.py keys drawn from ``space``."""
    params = {}
    for key, choice in space.items():
        if isinstance(choice, list):
            params[key] = trial.suggest_categorical(key, choice)
        else:
            integer = isinstance(choice["low"], int) and isinstance(choice["high"], int)
            draw = trial.suggest_int if integer else trial.suggest_float
            params[key] = draw(key, choice["low"], choice["high"], log=choice.get("log", False))
    return params


def check_fixed_part(opts, main_args, recorded):
    """The study's main.py arguments: the recorded ones (none given, or --report), else ``main_args``,
    which must be the recorded ones when the study exists."""
    if recorded is None or opts["report"] or not main_args:
        return main_args if recorded is None else recorded
    if recorded != main_args:
        fail(f"study {opts['name']} runs main.py with {' '.join(recorded) or 'its defaults'}, not "
             f"{' '.join(main_args)}. Continue it with the same arguments, or start another with --name=NEW.")
    return main_args


def open_study(opts, url, storage, main_args, space):
    """The study (created, or loaded to continue it), its fixed main.py arguments and searched keys recorded."""
    import optuna

    Path(opts["dir"]).mkdir(parents=True, exist_ok=True)
    with FileLock(Path(opts["dir"]) / "study.lock"):  # processes starting at once would race to create the tables
        pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)
        study = optuna.create_study(study_name=opts["name"], storage=storage or studies.open_storage(url),
                                    direction="maximize", pruner=pruner, load_if_exists=True)
        if "main_args" not in study.user_attrs:
            study.set_user_attr("main_args", main_args)
            study.set_user_attr("searched", list(space))
    check_fixed_part(opts, main_args, study.user_attrs["main_args"])  # another process created it meanwhile
    return study


def objective(study, opts, main_args, space, metric, places):
    """One trial: a main.py run; its epochs' validation scores reported, pruned when hopeless."""
    import optuna

    def run_trial(trial):
        out_dir = trial.user_attrs.get("out_dir") or str(Path(opts["dir"]) / f"trial_{trial.number}")
        trial.set_user_attr("out_dir", out_dir)
        trial.set_user_attr("host", socket.gethostname())  # who runs it: see requeue_orphans
        trial.set_user_attr("pid", os.getpid())
        params = suggest(trial, space)
        pruned = []

        def on_row(row):
            epoch, value = int(row["epoch"]), float(row[f"val_{metric}"])
            trial.report(value, epoch)
            if trial.should_prune():
                pruned.append(f"val_{metric} {value:.4f} at epoch {epoch}")
            return bool(pruned)

        if main_runs.STOP.is_set():  # asked to stop before this trial began: nothing to resume
            study.stop()
            raise Interrupted(f"trial {trial.number} not started")
        finished = main_runs.read_metrics(out_dir)  # a run that ended before its trial could be told
        slot = places.get()
        try:
            command = main_runs.main_command(main_args, **params, wandb_group=opts["name"], **main_runs.run_args(out_dir))
            status = 0 if finished else main_runs.run_main(command, out_dir, on_row, slot,
                                                           on_start=lambda pid: trial.set_user_attr("main_pid", pid))
        finally:
            places.put(slot)
        if pruned:
            drop_resume_state(out_dir, opts)
            raise optuna.TrialPruned(f"{pruned[0]}, below the median of the finished trials")
        if main_runs.STOP.is_set() and not main_runs.read_metrics(out_dir):
            study.enqueue_trial(trial.params, user_attrs={"out_dir": out_dir})  # resumed from its last.pt
            study.stop()
            raise Interrupted(f"trial {trial.number} stopped; it resumes from {out_dir}/last.pt on the next run")
        if status != 0:
            raise TrialError(f"trial {trial.number}: main.py exited with status {status}: see {out_dir}/main.log")
        drop_resume_state(out_dir, opts)
        return main_runs.read_metrics(out_dir)["best_val_score"]

    return run_trial


def drop_resume_state(out_dir, opts):
    """A finished trial keeps best.pt, metrics and logs; its last.pt (the full resume state) only with --keep_last."""
    if not opts["keep_last"]:
        (Path(out_dir) / "last.pt").unlink(missing_ok=True)


class OneLineTrialErrors(logging.Filter):
    """Optuna logs a trial that ended in TrialError or Interrupted with a traceback and a second line ("failed
    with value None"); the error's own message says all there is, in one line."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (TrialError, Interrupted)):
            record.msg, record.args, record.exc_info = str(error), (), None
            return True
        return not record.getMessage().endswith("failed with value None.")


ONE_LINE_TRIAL_ERRORS = OneLineTrialErrors()


def tune(opts, main_args, config):
    """Run the study until it holds opts["trials"] finished trials (or only report); returns the exit status."""
    import optuna

    url = opts["storage"] or f"sqlite:///{Path(opts['dir']) / 'study.db'}"
    storage, recorded = studies.find_study(url, opts["name"])
    if opts["report"] and recorded is None:
        fail(f"there is no study {opts['name']} in {opts['storage'] or opts['dir']} to report on: start it "
             f"without --report (or give the --name, --dir or --storage it was started with).")
    main_args = check_fixed_part(opts, main_args, recorded)
    if opts["report"]:
        report(optuna.load_study(study_name=opts["name"], storage=storage), opts)
        return 0
    config = main_config(configurator.parse_command_line(main_args, main_defaults(), "main.py")[0])
    space = search_space(opts["space"], main_args, config)
    study = open_study(opts, url, storage, main_args, space)
    studies.requeue_orphans(study, Path(opts["dir"]) / "study.lock")
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=states))
    if done < opts["trials"]:
        fixed = [key for key in default_space(config) if key not in space] if not opts["space"] else []
        print(f"study {opts['name']}: searches {', '.join(space)}{'; fixed: ' + ', '.join(fixed) if fixed else ''}; "
              f"{done} of {opts['trials']} trials finished; runs in {opts['dir']}/trial_<n>", flush=True)
        logging.getLogger("optuna.study._optimize").addFilter(ONE_LINE_TRIAL_ERRORS)
        run_trial = objective(study, opts, main_args, space, config["select_metric"], main_runs.slots(opts["parallel"]))
        study.optimize(run_trial, n_trials=opts["trials"] - done, n_jobs=opts["parallel"], catch=(TrialError, Interrupted),
                       callbacks=[optuna.study.MaxTrialsCallback(opts["trials"], states=states),
                                  lambda study, trial: studies.requeue_orphans(study, Path(opts["dir"]) / "study.lock")])
        if main_runs.STOP.is_set():
            print(f"interrupted: rerun the same command to continue study {opts['name']}.", file=sys.stderr)
            return 128 + main_runs.STOP.signum
    report(study, opts)
    return 0


def report(study, opts):
    """trials.csv, the best trial as best_config.py and a command, and the study's figures as PNGs."""
    import optuna
    from optuna.visualization import matplotlib as plots

    folder = Path(opts["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    atomic.atomic_write(folder / "trials.csv", lambda f: f.write(frame.to_csv(index=False).encode()))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        print(f"study {opts['name']}: no finished trial yet; {folder}/trials.csv lists them.")
        return
    best = max(complete, key=lambda t: t.value)
    main_args = study.user_attrs["main_args"]
    keys = {**configurator.parse_command_line(main_args, main_defaults(), "main.py")[0], **best.params}
    config = main_config(keys)  # the study's, whatever this command gave
    command = " ".join(["python main.py", *main_args, *(f"--{k}={v}" for k, v in best.params.items())])
    text = (f"# The best trial ({best.number}, val {config['select_metric']} {best.value:.4f}) of study "
            f"{opts['name']}, as a main.py config:\n#   python main.py {folder / 'best_config.py'}\n# or: {command}\n"
            + "".join(f"{key} = {value!r}\n" for key, value in keys.items()))
    atomic.atomic_write(folder / "best_config.py", lambda f: f.write(text.encode()))
    figures = {"optimization_history.png": plots.plot_optimization_history}
    if len(complete) > 1:
        figures["param_importances.png"] = plots.plot_param_importances
    written = [save_figure(folder / name, draw, study) for name, draw in figures.items()]
    print(f"study {opts['name']}: best of {len(complete)} finished trials is {best.number} (val "
          f"{config['select_metric']} {best.value:.4f}, {best.user_attrs['out_dir']}).\nrun it: {command}\n"
          f"or:     python main.py {folder / 'best_config.py'}\nwritten: {folder / 'trials.csv'}, "
          + ", ".join(str(p) for p in written if p))
    wandb_logging.summary_run(config, opts["name"], "study", {"best_value": best.value, **best.params},
                              {"trials": frame.astype(str)}, [p for p in written if p])


def save_figure(path, draw, study):
    """One of Optuna's matplotlib figures as a PNG, or None (with a note) when it cannot be drawn."""
    plt = pyplot()  # headless
    try:
        axes = draw(study)
    except (ValueError, RuntimeError) as error:  # e.g. importances of parameters that never varied
        print(f"note: {path.name} not drawn ({error})")
        return None
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.tight_layout()
    atomic.atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    plt.close(figure)
    return path


# -----------------------------------------------------------------------------
# repeat: one configuration over several seeds

def repeat(opts, main_args, config):
    """One run per seed on one split, summary.csv/.md and the seeds' ensemble; returns the exit status."""
    seeds = parse_seeds(opts["seeds"])
    folder = Path(opts["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    split_seed = datasets.split_seed(config)  # -1 would follow each training seed: one split for all instead
    for seed in seeds:
        out_dir = str(folder / f"seed_{seed}")
        if main_runs.read_metrics(out_dir):
            print(f"seed {seed}: finished ({out_dir}/metrics.json), skipped")
            continue
        print(f"seed {seed}: {'resuming' if (Path(out_dir) / 'last.pt').is_file() else 'training'} in {out_dir} "
              f"(log: {out_dir}/main.log)", flush=True)
        command = main_runs.main_command(main_args, seed=seed, split_seed=split_seed, wandb_group=opts["name"],
                                         **main_runs.run_args(out_dir))
        status = main_runs.run_main(command, out_dir)
        if main_runs.STOP.is_set():
            print("interrupted: rerun the same command to continue (finished seeds are skipped).", file=sys.stderr)
            return 128 + main_runs.STOP.signum
        if status != 0:
            fail(f"seed {seed}: main.py exited with status {status}; see {out_dir}/main.log. Rerun the same "
                 f"command to retry it (finished seeds are skipped).")
    runs = {seed: main_runs.read_metrics(folder / f"seed_{seed}") for seed in seeds}
    table = seed_summary.summarise(runs)
    ensemble = ensemble_of_seeds(folder, config, seeds)
    seed_summary.write_summary(folder, table, seeds, ensemble)
    print((folder / "summary.md").read_text())
    wandb_logging.summary_run(config, opts["name"], "summary", {f"{metric}_{key}": value for metric, row in table.items()
                                                                for key, value in row.items() if key in ("mean", "std")})
    return 0


def parse_seeds(text):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        fail(f"--seeds={text} is not valid: give distinct integer seeds separated by commas, e.g. --seeds=0,1,2.")
    return seeds


def ensemble_of_seeds(folder, config, seeds):
    """The seeds' reported checkpoints as one ensemble on the test split (pre_trained_models.py
    --evaluate); its metrics.json, or None when it could not be evaluated."""
    checkpoints = [f"--checkpoint={folder / f'seed_{seed}' / (config['report_epoch'] + '.pt')}" for seed in seeds]
    args = [*checkpoints, "--evaluate=True", f"--data_dir={config['data_dir']}",
            f"--out_dir={folder / 'ensemble'}", "--num_workers=0",
            *([f"--cache_dir={config['cache_dir']}"] if config["cache_dir"] else [])]
    sys.stdout.flush()  # this command's lines before the evaluation's
    if subprocess.run([sys.executable, str(PREDICT_PY), *args]).returncode != 0:
        print("note: the ensemble of the seeds could not be evaluated (see the error above).", file=sys.stderr)
        return None
    return main_runs.read_metrics(folder / "ensemble")


# -----------------------------------------------------------------------------
# the command line

def parse(argv):
    """(command, experiments.py's options, main.py's arguments, the resolved main.py config)."""
    asks_help = configurator.asks_help(argv)
    if asks_help or not argv or argv[0] not in ("tune", "repeat"):
        print(__doc__ + "\nmain.py's keys: python main.py --help")
        raise SystemExit(0 if asks_help else 2)
    command, opts, main_args = argv[0], dict(OPTIONS), []
    for arg in argv[1:]:
        key, equals, text = arg.removeprefix("--").partition("=")
        if arg.startswith("--") and key in OPTIONS:  # a bare --report means --report=True
            opts[key] = configurator.convert(key, text if equals else "True", OPTIONS[key])
        elif arg.startswith("--") and key in MANAGED:
            fail(f"--{key} is set by experiments.py for each run (<dir>/trial_<n> or seed_<s>); use --dir=FOLDER.")
        else:
            main_args.append(arg)
    overrides, _ = configurator.parse_command_line(main_args, main_defaults(), "main.py")
    config = main_config(overrides)
    kind = config["model"] if config["encoder"] == "mel" else f"{config['model']}_{config['encoder']}"
    opts["name"] = opts["name"] or f"{command}_{kind}"
    opts["dir"] = opts["dir"] or str(Path("runs") / "experiments" / opts["name"])
    if opts["trials"] < 1 or opts["parallel"] < 1:
        fail(f"--trials and --parallel must be at least 1, got {opts['trials']} and {opts['parallel']}.")
    return command, opts, main_args, config


def stop_runs(signum, frame):
    """Ctrl-C or SIGTERM: the running main.py processes are stopped (they save last.pt) and the experiment ends."""
    main_runs.STOP.signum = signum
    main_runs.STOP.set()


def run(argv=None):
    try:
        return experiment(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as error:  # main.py's keys or a config file, refused by configurator
        fail(str(error))


def experiment(argv):
    """The tune or repeat command that ``argv`` asks for; returns the exit status."""
    command, opts, main_args, config = parse(argv)
    main_runs.STOP.clear()
    handlers = {number: signal.signal(number, stop_runs) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        return (tune if command == "tune" else repeat)(opts, main_args, config)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(run())
