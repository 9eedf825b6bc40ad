"""A checkpoint, or an ensemble of checkpoints, scored on the test split it was trained with:
``pre_trained_models.py --evaluate=True`` (the command line and the model loading stay there).

    settings = evaluate_checkpoint.shared_split_settings(args, members, defaults)  # the members' common test split
    evaluate_checkpoint.report(args, members, model, checkpoint, settings, device)  # metrics.json + figures

The test clips go through the training pipeline (cache, first n_frames, broken clips reported) and
test.evaluate, so the numbers compare with main.py's test results, not with the windowed prediction.
"""
import sys
from pathlib import Path

import models_utils
import utils
from fma_genres import tasks
from fma_genres.data import cache as mel_cache, datasets
from fma_genres.inference import probe_windows
from fma_genres.runtime import errors
from fma_genres.runtime.errors import UsageError
from test import evaluate  # the project's test.py (python and pytest.ini put the project root first on sys.path)


def split_settings(args, checkpoint, defaults, path=None):
    """The keys that define the test split (``defaults``: their main.py defaults) as the checkpoint was trained.

    A command-line value that contradicts them is refused (evaluating on another split would score the
    model on clips it was trained on). The original's bare state_dicts record none: the command line's
    values (or main.py's defaults) are used, with a warning. ``path``: the checkpoint's (default --checkpoint).
    """
    path = path or args.checkpoint
    trained = checkpoint.get("config") or {}
    given = {key: getattr(args, key, None) for key in defaults if getattr(args, key, None) is not None}
    settings = {**defaults, **given, **{key: trained[key] for key in defaults if key in trained}}
    random = settings["split"] == "random" or settings["dataset"] != "fma"
    relevant = defaults if random else ("subset", "split")  # seeds shape random splits only
    conflicts = [f"--{key}={value} (trained with {trained[key]})" for key, value in given.items()
                 if key in relevant and key in trained and trained[key] != value]
    if conflicts:
        raise UsageError(f"{path} was trained with other split settings than {', '.join(conflicts)}: "
                         f"its test split is the one of its training run, or the evaluation would score clips "
                         f"it was trained on. Drop these options.")
    if not trained:
        print(f"warning: {path} does not record the split it was trained on (the original project "
              f"trained on a random split with an unrecorded seed): its test clips may include training clips.",
              file=sys.stderr)
    return settings


def recorded_data_dir(members):
    """The data folder the (first) member was trained on, which --evaluate uses unless --data_dir is given."""
    path, _, checkpoint = members[0]
    data_dir = (checkpoint.get("config") or {}).get("data_dir")
    if not data_dir:  # the original's bare state_dicts record nothing
        raise UsageError(f"{path} does not record the data it was trained on: give --data_dir, the folder holding "
                         f"fma_metadata/ and fma_<subset>/ (the layout download_data.sh writes).")
    return data_dir


def split_identity(settings):
    """What decides which clips are test clips: the subset for FMA's official split; else the sizes and seed."""
    if settings["dataset"] == "fma" and settings["split"] == "official":
        return {"subset": settings["subset"], "split": "official"}
    return {**{key: value for key, value in settings.items() if key not in ("seed", "split_seed")},
            "split_seed": datasets.split_seed(settings)}  # the seed that draws it


def shared_split_settings(args, members, defaults):
    """The split settings of the members ([(path, model, checkpoint)]), refused unless every member was
    trained on the same split: else the test clips of one would include training clips of another."""
    settings = [split_settings(args, checkpoint, defaults, path) for path, _, checkpoint in members]
    for (path, _, _), other in zip(members[1:], settings[1:]):
        if split_identity(other) != split_identity(settings[0]):
            raise UsageError(f"{path} and {members[0][0]} were trained on different splits ({split_identity(other)} "
                             f"vs {split_identity(settings[0])}): the test clips of one would include training clips of "
                             f"the other. Evaluate members trained on one split (experiments.py repeat pins it).")
    return settings[0]


def member_scores(members, loader, device):
    """Each member's own test figures (the numbers only), shown next to the ensemble's."""
    rows = []
    for path, model, checkpoint in members:
        scores = evaluate(model, loader, device, checkpoint)[0]
        rows.append({"checkpoint": str(path), **{k: v for k, v in scores.items() if not isinstance(v, (dict, list))}})
    return rows


def report(args, members, model, checkpoint, settings, device):
    """Evaluate ``model`` (the one member, or the members' ensemble) on the test split of ``settings``;
    write metrics.json and figures like training does, print the summary; returns the exit status 0."""
    task = tasks.of(checkpoint)  # a multi-label one's genres: those of its training split (multilabel.load_fma)
    labels = {key: checkpoint["config"][key] for key in ("target", "min_genre_tracks") if key in (checkpoint.get("config") or {})}
    recorded = (checkpoint.get("config") or {}).get("data_dir")
    try:
        data = datasets.load(datasets.DataSettings.from_config(
            {**settings, **labels, "data_dir": args.data_dir, "cache_dir": args.cache_dir or ""}))
    except errors.DataError as error:
        if not recorded or recorded == args.data_dir:
            raise
        raise errors.DataError(f"{error} Note: {args.checkpoint} was trained on the data in {recorded}, which "
                              f"--evaluate uses when --data_dir is not given.") from None
    class_names, test_tracks = data.class_names, data.splits["test"]
    if list(class_names) != list(checkpoint["class_names"]):
        raise UsageError(f"The checkpoint was trained on the genres {checkpoint['class_names']} but "
                         f"{args.data_dir} ({settings['dataset']} {settings['subset']}) has {class_names}: "
                         f"evaluate it on the data it was trained on (--data_dir, --subset).")
    cache = (probe_windows.test_cache(model, test_tracks, data, checkpoint)
             if isinstance(model, probe_windows.AUDIO_WINDOW_MODELS)
             else mel_cache.build_cache(test_tracks, data.cache_root, data.identity, preprocessing=checkpoint["preprocessing"]))
    # make_loaders wants three splits; only "test" is used. It feeds raw dB (the model standardises
    # itself when its checkpoint says so), so no statistics are computed.
    loaders, _ = utils.make_loaders(cache, dict.fromkeys(("train", "val", "test"), test_tracks),
                                    args.batch_size, settings=utils.LoaderSettings(device=device))
    task.use_labels(loaders, data)
    scores, result = evaluate(model, loaders["test"], device, checkpoint)
    metrics = {**scores, "checkpoint": " + ".join(map(str, args.checkpoints)),
               "model": " + ".join(c["model"] for _, _, c in members),
               "epoch": (checkpoint.get("training") or {}).get("epoch"), **settings}
    if len(members) > 1:
        metrics["members"] = member_scores(members, loaders["test"], device)
    out_dir = Path(args.out_dir or Path(args.checkpoint).parent / ("evaluation" if len(members) == 1 else "ensemble"))
    models_utils.save_report(out_dir, metrics, result["targets"], result["probabilities"], class_names)
    seeded = f", seed {datasets.split_seed(settings)}, train_size {settings['train_size']}"
    split = (f"FMA {settings['subset']} ({settings['split']}{seeded if settings['split'] == 'random' else ''})"
             if settings["dataset"] == "fma" else f"{args.data_dir} (split_seed {datasets.split_seed(settings)})")
    print(f"test split of {split}: {'ensemble: ' if len(members) > 1 else ''}{task.headline(metrics)} on "
          f"{metrics['test_examples']} clips; metrics.json and figures in {out_dir}")
    for member in metrics.get("members", []):
        print(f"  member {member['checkpoint']}: {task.headline(member)}")
    print(task.summary(metrics, checkpoint.get("genres"))[1])
    return 0


