# A probe on a frozen pretrained encoder's cached embeddings (docs/encoders.md), the recipe of the
# probe_<encoder>_<subset>.py files that include it. FMA's official artist-filtered split, so the test
# figure compares with the published ones (X-ARES, MARBLE).
split = "official"
head = "mlp"                  # MARBLE's probe: a learned mix of the layers, 512 hidden units, dropout 0.5
epochs = 50                   # a probe's epoch on cached embeddings takes seconds (docs/performance.md)
batch_size = 64
lr = 1e-3
weight_decay = 1e-4
