"""The FMA genre classification suite's library, one sub-package per layer.

Imports go one way, from a higher layer to a lower one (or within a layer), never in a circle, and
nothing imports an entry point; tests/test_layers.py checks every module's imports (function-level
ones too) against this order, lowest first:

    runtime     fma_genres/runtime/: errors, atomic writes, devices and cores, the allocator, locks,
                signals (preemption), torchrun (distributed), headless matplotlib (figures), child
                processes that end with their parent (child_processes)
    data        utils.py (audio -> mel dB, SpecAugment, the clip dataset and loaders); fma_genres/data/:
                FMA metadata (fma), datasets, cache, preload, demo data; fma_genres/multilabel.py (FMA's
                genre tree as multi-label targets); fma_genres/tasks.py (single-label or the genre tree:
                loss, probabilities, scores, figures, W&B entries as plain data, prediction lines; the
                datasets ask it which labels to read, so it sits here) with fma_genres/metrics.py (every
                metric, defined once) and fma_genres/report_figures.py (each task's test figures)
    models      models.py, models_utils.py; fma_genres/encoders/: pretrained encoders (lazy transformers/dasheng),
                their embedding cache, the probe head
    training    train.py, test.py; fma_genres/training/: run state and resume, fine-tuning
    inference   fma_genres/inference/: audio windows, prediction, evaluation of a checkpoint, export
    reporting   fma_genres/reporting/: W&B, prediction plots
    experiments fma_genres/experiments/: experiments.py's library: main.py run as a child (main_runs), an Optuna study's shared storage
                (studies) and repeat's summary over seeds (seed_summary)
    config      fma_genres/configurator.py: a run's keys resolved and checked against the registries of
                every layer below (MODELS, DATASETS, EPOCH_LOSSES, ...), config files, run folders
    entry       main.py, pre_trained_models.py, experiments.py, app.py: read the command line, print
                errors and choose exit codes; imported by nobody

training and inference are one level (inference's evaluation scores a checkpoint with test.py's
evaluate), and so are reporting and experiments.
"""
