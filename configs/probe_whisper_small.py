# A probe on frozen whisper embeddings, fma_small (8 balanced genres): published 58.1% test accuracy (X-ARES, Whisper's encoder);
# not yet measured with this suite (docs/encoders.md: Published figures to reach).
include("probe_recipe.py")
encoder = "whisper"
subset = "small"
