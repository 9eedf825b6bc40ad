# Fine-tuning dasheng end to end on fma_small (8 balanced genres), LP-FT from configs/probe_dasheng_small.py's
# best.pt. Dasheng-base: X-ARES reports 64.3% for its frozen probe on fma_small; fine-tuning is not yet measured
# with this suite (docs/encoders.md).
include("finetune_recipe.py")
encoder = "dasheng"
subset = "small"
