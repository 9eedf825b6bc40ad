# A probe on frozen dasheng embeddings, fma_small (8 balanced genres): published 64.3% test accuracy (X-ARES, Dasheng-base);
# not yet measured with this suite (docs/encoders.md: Published figures to reach).
include("probe_recipe.py")
encoder = "dasheng"
subset = "small"
