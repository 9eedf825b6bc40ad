# A probe on frozen whisper embeddings, fma_medium (16 unbalanced genres): no published figure;
# not yet measured with this suite (docs/encoders.md: Published figures to reach).
include("probe_recipe.py")
encoder = "whisper"
subset = "medium"
class_weights = True          # its genres range from tens to thousands of training clips
select_metric = "macro_f1"    # best.pt by the genres' mean F1, not by the majority genres' accuracy
