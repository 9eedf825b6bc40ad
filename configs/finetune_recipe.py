# Fine-tuning a pretrained encoder end to end with its probe (docs/encoders.md: Fine-tuning), the recipe of the
# finetune_<encoder>_small.py files that include it. LP-FT: first train the probe (configs/probe_<encoder>_small.py),
# then start from it, so the new head does not disturb the encoder while it is still random:
#     python main.py configs/finetune_dasheng_small.py --init_from=runs/probe/latest/best.pt
# (without init_from the head starts afresh, standardised from the first training clips through the encoder).
split = "official"
finetune_encoder = True
head = "mlp"                  # the probe's (probe_recipe.py), so its best.pt loads as the starting point
encoder_lr = 1e-5             # the encoder moves slowly: its pretrained features are the point
lr = 1e-4                     # the probe's head, already trained with LP-FT
warmup_steps = 200            # one epoch of fma_small at batch 32
frozen_layers = 0             # raise it (and drop batch_size's memory) on a small GPU
data_augmentation = True      # the encoder's own: waveform gain and noise (Dasheng), SpecAugment (Whisper, CLAP)
epochs = 10
batch_size = 32
amp = "auto"                  # bfloat16 autocast on CUDA
