"""A checkpoint, or an ensemble of checkpoints, scored on the test split it was trained with:
``pre_trained_models.py --evaluate=True`` (the command line and the model loading stay there).

    settings = evaluate_checkpoint.shared_split_settings(args, members, defaults)  # the members' common test split
    evaluate_checkpoint.report(args, members, model, checkpoint, settings, device)  # metrics.json + figures

The test clips go through the training pipeline (cache, first n_frames, broken clips reported) and
test.evaluate, so the numbers compare with main.py's test results, not with the windowed prediction.
A zero-shot model (zero_shot.py), trained on nothing, takes the command line's split (given_settings).
"""
import sys
from pathlib import Path

import torch

import models_utils
import utils
from fma_genres import tasks
from fma_genres.data import cache as mel_cache, datasets
from fma_genres.inference import predict, probe_windows
from fma_genres.runtime import errors
from fma_genres.runtime.errors import UsageError
from test import evaluate, test  # the project's test.py (python and pytest.ini put the project root first on sys.path)


def split_settings(args, checkpoint, defaults, path=None):
    """The keys that define the test split (``defaults``: their main.py defaults) as the checkpoint was trained.

    A command-line value that contradicts them is refused (evaluating on another split would score the
    model on clips it was trained on). The original's bare state_dicts record none: the command line's
    values (or main.py's defaults) are used, with a warning. ``path``: the checkpoint's (default --checkpoint).
    """
    path = path or args.checkpoint
    trained = checkpoint.get("config") or {}
    given = given_settings(args, defaults)
    settings = {**defaults, **given, **{key: trained[key] for key in defaults if key in trained}}
    random = settings["split"] == "random" or settings["dataset"] != "fma"
    relevant = defaults if random else ("dataset", "subset", "split")  # seeds shape random splits only
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


def given_settings(args, defaults):
    """The split keys given on the command line; a zero-shot model, trained on nothing, takes any split with
    these on top of ``defaults``."""
    return {key: getattr(args, key) for key in defaults if getattr(args, key, None) is not None}


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


def member_scores(members, loaders, device):
    """Each member's own test figures (the numbers only), shown next to the ensemble's; ``loaders``: the
    test loader of each member's preprocessing (by its JSON)."""
    rows = []
    for path, model, checkpoint in members:
        loader = loaders[predict.preprocessing_key(checkpoint)]
        scores = evaluate(model, loader, device, checkpoint)[0]
        rows.append({"checkpoint": str(path), **{k: v for k, v in scores.items() if not isinstance(v, (dict, list))}})
    return rows


def groups_of(model, checkpoint):
    """[(model, checkpoint, members)] that read one preprocessing each: a TrackEnsemble's groups, or the model."""
    return model.groups if isinstance(model, predict.TrackEnsemble) else [(model, checkpoint, 1)]


def test_cache(model, checkpoint, tracks, data):
    """The test tracks' cache a model reads: its encoder's embeddings, or its mel-spectrograms."""
    if predict.reads_encoder(checkpoint):
        return probe_windows.test_cache(model, tracks, data, checkpoint)
    return mel_cache.build_cache(tracks, data.cache_root, data.identity, preprocessing=checkpoint["preprocessing"])


def test_loaders(groups, test_tracks, data, batch_size, device, task):
    """{preprocessing JSON: test loader} over the test tracks every group's cache can read (a clip broken
    for one preprocessing is left out for all, so the groups score the same clips in the same order)."""
    caches = [test_cache(model, checkpoint, test_tracks, data) for model, checkpoint, _ in groups]
    usable = test_tracks.loc[[all(t in cache for cache in caches) for t in test_tracks.index]]
    loaders = {}
    for cache, (_, checkpoint, _) in zip(caches, groups):
        # make_loaders wants three splits; only "test" is used. It feeds raw dB (the model standardises
        # itself when its checkpoint says so), so no statistics are computed.
        split, _ = utils.make_loaders(cache, dict.fromkeys(("train", "val", "test"), usable), batch_size,
                                      settings=utils.LoaderSettings(device=device))
        task.use_labels(split, data)
        loaders[predict.preprocessing_key(checkpoint)] = split["test"]
    return loaders


def evaluate_groups(groups, loaders, device, checkpoint):
    """test.evaluate's (scores, result) of the groups' mean track probabilities (one group: its own)."""
    if len(groups) == 1:
        return evaluate(groups[0][0], loaders[predict.preprocessing_key(groups[0][1])], device, checkpoint)
    task = tasks.of(checkpoint)
    results = [test(model, loaders[predict.preprocessing_key(c)], device, task=task) for model, c, _ in groups]
    mean = predict.members_mean(groups, [r["probabilities"] for r in results])
    targets = results[0]["targets"]
    loss = task.loss(task.logits(torch.from_numpy(mean)), torch.from_numpy(targets), reduction="sum").item()
    scores = task.scores(targets, mean, checkpoint["class_names"], checkpoint.get("genres"))
    return ({"test_loss": loss / len(targets), **scores, "test_examples": len(targets)},
            {"targets": targets, "probabilities": mean})


def test_data(args, checkpoint, settings):
    """The datasets.Dataset of ``settings`` in args.data_dir, with the checkpoint's labels (target, genres)."""
    labels = {key: checkpoint["config"][key] for key in ("target", "min_genre_tracks") if key in (checkpoint.get("config") or {})}
    recorded = (checkpoint.get("config") or {}).get("data_dir")
    try:
        return datasets.load(datasets.DataSettings.from_config(
            {**settings, **labels, "data_dir": args.data_dir, "cache_dir": args.cache_dir or ""}))
    except errors.DataError as error:
        if not recorded or recorded == args.data_dir:
            raise
        raise errors.DataError(f"{error} Note: {args.checkpoint} was trained on the data in {recorded}, which "
                              f"--evaluate uses when --data_dir is not given.") from None


def report(args, members, model, checkpoint, settings, device, data=None):
    """Evaluate ``model`` (the one member, or the members' ensemble) on the test split of ``settings`` (in
    ``data``, default test_data's); write metrics.json and figures like training does, print the summary;
    returns the exit status 0."""
    task = tasks.of(checkpoint)  # a multi-label one's genres: those of its training split (multilabel.load_fma)
    data = data or test_data(args, checkpoint, settings)
    class_names, test_tracks = data.class_names, data.splits["test"]
    if list(class_names) != list(checkpoint["class_names"]):
        raise UsageError(f"The checkpoint was trained on the genres {checkpoint['class_names']} but "
                         f"{args.data_dir} ({settings['dataset']} {settings['subset']}) has {class_names}: "
                         f"evaluate it on the data it was trained on (--data_dir, --subset).")
    groups = groups_of(model, checkpoint)
    loaders = test_loaders(groups, test_tracks, data, args.batch_size, device, task)
    scores, result = evaluate_groups(groups, loaders, device, checkpoint)
    metrics = {**scores, "checkpoint": " + ".join(str(path) for path, _, _ in members),
               "model": " + ".join(c["model"] for _, _, c in members),
               "epoch": (checkpoint.get("training") or {}).get("epoch"), **settings}
    if len(members) > 1:
        metrics["members"] = member_scores(members, loaders, device)
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


