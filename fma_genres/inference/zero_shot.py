"""Zero-shot genres with CLAP: no training, a track's genre scores come from text prompts built from the
genres' names (pre_trained_models.py --zero_shot=True).

    model, checkpoint = load_zero_shot(["Rock", "Jazz", "Folk"])   # laion/larger_clap_music by default
    for path, scores, n_windows, error in predict.predict(model, checkpoint, ["song.mp3"]): ...

The model is a probe_windows.EncoderProbe whose "probe" is ZeroShot, and its checkpoint a plain dict
shaped like a probe's (model="zero_shot", class_names, the CLAP encoder's window settings as preprocessing,
target genre_top), so prediction (table, --json, --output) and --evaluate (the test split through the
embedding cache, which a CLAP probe's run may already have filled) take it like any checkpoint. A track is
cut into the encoder's windows as for a probe; its audio embedding is the mean of its windows' normalised
projected embeddings (an embedding cache row); its score per genre is the softmax over the genres of
logit_scale x cosine(audio, prompt), logit_scale being CLAP's own learned temperature (logit_scale_a).

The genres compete in one softmax, so the scores sum to 1: single-label, FMA's genre_top. The genre tree
(genres="tree": every title of genres.csv) is scored the same way, one softmax over all its genres with the
top_k shown: without training there are no per-genre thresholds for a multi-label decision.
"""
import torch
import torch.nn.functional as F

from fma_genres.data import fma
from fma_genres.encoders import ClapEncoder, load_encoder
from fma_genres.encoders.embedding_cache import checkpoint_preprocessing
from fma_genres.inference.probe_windows import EncoderProbe
from fma_genres.runtime.errors import UsageError

# LAION-CLAP's README: "The zeroshot GTZAN score is evaluated using the prompt `This audio is a <genre> song.`"
DEFAULT_PROMPT = "This audio is a {genre} song."
DEFAULT_WEIGHTS = ClapEncoder.default_weights


class ZeroShot(torch.nn.Module):
    """CLAP zero-shot classification (Wu et al., "Large-scale contrastive language-audio pretraining", ICASSP 2023)."""

    def __init__(self, prompt_embeddings, logit_scale):
        super().__init__()
        self.register_buffer("prompts", F.normalize(prompt_embeddings.float(), dim=-1))  # (genres, dim)
        self.logit_scale = logit_scale

    def embed(self, rows):
        """(B, dim): each track's mean of its windows' normalised embeddings (rows: (B, windows, 1, dim))."""
        return F.normalize(rows[:, :, 0].float(), dim=-1).mean(dim=1)

    def forward(self, rows):
        logits = self.logit_scale * F.normalize(self.embed(rows), dim=-1) @ self.prompts.T
        return logits, logits.softmax(dim=1)


def load_zero_shot(genres, prompt=DEFAULT_PROMPT, weights=None, device=None):
    """(EncoderProbe over a ZeroShot of these genres, its checkpoint dict); CLAP ``weights``: a hub name or
    a save_pretrained folder with its tokenizer (default: laion/larger_clap_music)."""
    encoder = load_encoder(ClapEncoder.name, weights, device)
    prompts = [prompt.format(genre=genre) for genre in genres]
    model = EncoderProbe(ZeroShot(encoder.embed_text(prompts), encoder.logit_scale), encoder).to(encoder.device)
    checkpoint = {"model": "zero_shot", "class_names": list(genres), "target": "genre_top", "prompts": prompts,
                  "preprocessing": checkpoint_preprocessing(encoder)}
    return model.eval(), checkpoint


def chosen_genres(genres=None, subset="small", data_dir=None):
    """The genres to score: a comma-separated list, "tree" (every genre of data_dir's genres.csv), or by
    default FMA's top genres of the subset (small: its 8; medium and large: all 16)."""
    if genres == "tree":
        if not data_dir:
            raise UsageError("--genres=tree reads FMA's genre tree from genres.csv: give --data_dir, the folder "
                             "holding fma_metadata/ (the layout download_data.sh writes).")
        return fma.genre_titles(data_dir)
    if genres:
        names = [name.strip() for name in genres.split(",") if name.strip()]
        if len(set(names)) < 2 or len(set(names)) < len(names):
            raise UsageError(f"--genres={genres} must name at least two different genres, each once "
                             f"(e.g. --genres=Rock,Jazz,Folk): the scores are a softmax over them.")
        return names
    return fma.FMA_SMALL_GENRES if (subset or "small") == "small" else fma.FMA_TOP_GENRES


def check_prompt(prompt):
    """UsageError unless the prompt template holds {genre} and nothing else in braces."""
    try:
        ok = "{genre}" in prompt and prompt.format(genre="Rock")
    except (KeyError, IndexError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"--prompt={prompt!r} must hold {{genre}}, where each genre's name goes, and no other "
                         f"braces: e.g. --prompt='{DEFAULT_PROMPT}' (the default).")
