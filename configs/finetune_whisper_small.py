# Fine-tuning whisper end to end on fma_small (8 balanced genres), LP-FT from configs/probe_whisper_small.py's
# best.pt. Whisper-base's encoder: X-ARES reports 58.1% for its frozen probe on fma_small; fine-tuning is not yet
# measured with this suite (docs/encoders.md).
include("finetune_recipe.py")
encoder = "whisper"
subset = "small"
grad_checkpointing = True     # the encoder's 1,500 positions per window: activations dominate its memory
