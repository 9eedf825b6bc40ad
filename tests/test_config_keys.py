"""One declaration per config key: its constant line in main.py (default, type, --help text) and, where its
rules differ from the defaults, one entry of configurator.KEYS; resume, run names and the split follow."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import main
import pre_trained_models
from fma_genres import configurator
from fma_genres.configurator import Key
from fma_genres.inference import evaluation
from fma_genres.reporting import wandb_logging
from fma_genres.runtime.errors import ConfigError
from fma_genres.training import run_state

ROOT = Path(__file__).resolve().parents[1]
NEW_LINE = "new_key = 3                  # a key a user added, with its comment\n"
OTHER = "<other>"  # a value no key has by default


@pytest.fixture
def new_main(tmp_path):
    """A copy of main.py whose constants block ends with one more key, new_key."""
    text = (ROOT / "main.py").read_text()
    end = text.index(configurator.RULER, text.index(configurator.RULER) + 1)  # the block's closing ruler
    path = tmp_path / "main.py"
    path.write_text(text[:end] + NEW_LINE + text[end:])
    return path


def run_copy(path, *argv):
    """The copy of main.py run as a user runs main.py (the project's modules on the path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(path), *argv], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)


def resume_with(defaults, overrides, trained=None):
    """The config a run resumed with ``overrides`` continues with (run_state's rule, main.py's derived set)."""
    config = configurator.make_config({**overrides, "resume": True, "out_dir": "runs/x"}, defaults)
    trained = configurator.make_config({}, defaults) if trained is None else trained
    return run_state.resumed_config(trained, config, overrides,
                                    configurator.keys_where("may_change_on_resume", defaults))


def name_of(overrides, defaults):
    config = configurator.make_config(overrides, defaults)
    return wandb_logging.run_name(config, configurator.naming_defaults(config, defaults))


@pytest.mark.slow  # runs main.py copies as subprocesses
def test_a_constant_line_alone_makes_a_key_valid_typed_and_documented(new_main):
    helped = run_copy(new_main, "--help")
    assert helped.returncode == 0, helped.stderr
    line = next(line for line in helped.stdout.splitlines() if line.strip().startswith("--new_key="))
    assert line.split(None, 1) == ["--new_key=3", "a key a user added, with its comment"]
    refused = run_copy(new_main, "--new_key=five")
    assert refused.returncode == 1 and "--new_key=five: expected an int like the default 3" in refused.stderr
    assert "Traceback" not in refused.stderr
    defaults = configurator.script_defaults(new_main)  # what experiments.py and --evaluate read: the text
    assert defaults["new_key"] == 3 and list(defaults)[:-1] == list(main.CONFIG)
    overrides, _ = configurator.parse_command_line(["--new_key=5"], defaults, new_main)
    assert configurator.make_config(overrides, defaults)["new_key"] == 5


def test_a_new_key_is_fixed_on_resume_and_names_the_run_by_default(new_main):
    defaults = configurator.script_defaults(new_main)
    with pytest.raises(ConfigError, match=r"new_key=5 \(checkpoint: 3\)"):
        resume_with(defaults, {"new_key": 5})
    old = {k: v for k, v in configurator.make_config({}, defaults).items() if k != "new_key"}  # saved before it
    assert resume_with(defaults, {}, trained=old)["new_key"] == 3
    assert name_of({"new_key": 5}, defaults) == "crnn new_key=5 seed=0"
    assert name_of({}, defaults) == "crnn seed=0"


def test_one_table_entry_gives_a_new_key_its_own_rules(new_main, monkeypatch):
    monkeypatch.setitem(configurator.KEYS, "new_key", Key(choices=(3, 5), may_change_on_resume=True, names_run=False))
    defaults = configurator.script_defaults(new_main)
    with pytest.raises(ConfigError, match="new_key=4 is not valid: choose one of 3, 5"):
        configurator.make_config({"new_key": 4}, defaults)
    assert resume_with(defaults, {"new_key": 5})["new_key"] == 5
    assert name_of({"new_key": 5}, defaults) == "crnn seed=0"
    assert "new_key" in configurator.resume_help(defaults).split("values: ")[1]
    monkeypatch.setitem(configurator.KEYS, "new_key", Key(minimum=1))
    with pytest.raises(ConfigError, match="new_key must be at least 1, got 0"):
        configurator.make_config({"new_key": 0}, defaults)


@pytest.mark.parametrize("key", list(main.CONFIG))
def test_resume_and_the_run_name_treat_every_key_as_the_table_declares(key):
    rules = configurator.KEYS.get(key, Key())
    config = configurator.make_config({}, main.CONFIG)
    changed = {**config, key: OTHER}
    middle = wandb_logging.run_name(changed, configurator.naming_defaults(config, main.CONFIG)).split()[1:-1]
    assert middle == ([f"{key}={OTHER}"] if rules.names_run else [])  # model starts a name and seed ends it
    may_change = configurator.keys_where("may_change_on_resume", main.CONFIG)
    if rules.may_change_on_resume:
        resumed = run_state.resumed_config(config, changed, {key: OTHER}, may_change)
        assert resumed[key] == (True if key == "resume" else OTHER)  # a resumed run is one, whatever it says
    else:
        with pytest.raises(ConfigError, match=f"{key}='{OTHER}'"):
            run_state.resumed_config(config, changed, {key: OTHER}, may_change)


def test_preload_changes_on_resume_and_stays_out_of_run_names_as_every_run_control_key():
    """The rules used to be copied by hand into run_state and wandb_logging, and disagreed about preload."""
    named = configurator.keys_where("names_run", main.CONFIG)
    may_change = configurator.keys_where("may_change_on_resume", main.CONFIG)
    assert "preload" in may_change and "preload" not in named
    assert set(may_change) & set(named) == {"epochs", "lr", "encoder_lr", "weight_decay"}  # these change what is learnt


def test_the_table_declares_only_main_pys_keys():
    assert set(configurator.KEYS) <= set(configurator.script_defaults(ROOT / "main.py"))


def test_evaluate_rebuilds_the_split_from_main_pys_text_and_the_checkpoints_config():
    defaults = pre_trained_models.main_split_defaults()
    assert list(defaults) == configurator.keys_where("defines_split", main.CONFIG)
    assert defaults == {key: main.CONFIG[key] for key in defaults}  # main.py's values, no copy to drift
    args = argparse.Namespace(checkpoint="x.pt", subset=None, split="random", seed=None, train_size=None)
    bare = evaluation.split_settings(args, {}, defaults)  # an original bare state_dict records no config
    assert bare == {**defaults, "split": "random"}
    trained = {**main.CONFIG, "split": "random", "train_size": 0.7, "split_seed": 4}
    assert evaluation.split_settings(args, {"config": trained}, defaults) == {k: trained[k] for k in defaults}
