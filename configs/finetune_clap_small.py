# Fine-tuning clap end to end on fma_small (8 balanced genres), LP-FT from configs/probe_clap_small.py's best.pt.
# CLAP (larger_clap_music): no published fma_small figure; not yet measured with this suite (docs/encoders.md).
include("finetune_recipe.py")
encoder = "clap"
subset = "small"
