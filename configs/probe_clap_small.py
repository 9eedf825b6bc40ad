# A probe on frozen clap embeddings, fma_small (8 balanced genres): published no published fma_small figure;
# not yet measured with this suite (docs/encoders.md: Published figures to reach).
include("probe_recipe.py")
encoder = "clap"
subset = "small"
