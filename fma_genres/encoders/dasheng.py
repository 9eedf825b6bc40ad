"""Dasheng (Xiaomi, Apache-2.0): a masked-autoencoder audio transformer at 16 kHz, from the dasheng package.

Its published weights are .pt files ({"model": state_dict, "config": kwargs}) on Zenodo, which torch.hub
keeps in its cache (~/.cache/torch/hub/checkpoints). The package's own names (dasheng_base, dasheng_06B,
dasheng_12B) set the sizes the files' configs may lack; any other .pt must carry them in its config.
"""
import functools
import os
from pathlib import Path

import torch
import torch.utils.checkpoint

from fma_genres.encoders.base import Encoder, looks_local, weights_error

# embed_dim, depth, num_heads of the published sizes, as the package's dasheng_base() etc. set them.
SIZES = {"dasheng_base": (768, 12, 12), "dasheng_06b": (1280, 32, 16), "dasheng_12b": (1536, 40, 24)}


class DashengEncoder(Encoder):
    name, sample_rate, default_weights = "dasheng", 16000, "dasheng_base"
    licence = "Apache-2.0"
    source = "the dasheng package's Zenodo record (https://zenodo.org/records/11511780), e.g. dasheng_base.pt"
    local_form = ".pt file"
    augmentation = "waveform"  # its input is audio: its own front end makes the spectrogram
    front_end = ("front_end.", "init_bn.", "patch_embed.", "time_pos_embed", "freq_pos_embed", "cls_token",
                 "token_pos_embed")
    blocks = "blocks"

    def load(self, weights):
        from dasheng.pretrained.pretrained import PRETRAINED_CHECKPOINTS  # lazy: an optional package

        urls = {name.lower(): url for name, url in PRETRAINED_CHECKPOINTS.items()}
        dump = self.read_file(weights) if looks_local(weights) else self.download(weights, urls)
        if not (isinstance(dump, dict) and {"model", "config"} <= set(dump)):
            raise weights_error(self, weights, "it is not a Dasheng checkpoint (a dict with 'model' and 'config')")
        config = dict(dump["config"])
        sizes = SIZES.get(Path(weights).stem.lower())
        if sizes:
            config.update(zip(("embed_dim", "depth", "num_heads"), sizes))
        model = self.build(config)
        model.load_state_dict(dump["model"], strict=True)
        return model

    def build(self, architecture):
        from dasheng.pretrained.pretrained import Dasheng  # lazy: an optional package

        self.config = dict(architecture)
        return Dasheng(**self.config)

    def architecture(self):
        return self.config

    def enable_checkpointing(self):
        """torch.utils.checkpoint around each block (the dasheng package has no switch of its own)."""
        for block in self.model.blocks:
            block.forward = functools.partial(checkpointed, block.forward)

    def read_file(self, weights):
        if not Path(weights).expanduser().is_file():
            raise weights_error(self, weights, "no such file")
        return torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)

    def download(self, weights, urls):
        """The published checkpoint named weights, from torch.hub's cache or downloaded into it."""
        url = urls.get(weights.lower())
        if url is None:
            raise weights_error(self, weights, f"it is not one of the published names {sorted(SIZES)} and no "
                                               f"such file exists")
        file_name = f"{weights.lower()}.pt"
        cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        if os.environ.get("HF_HUB_OFFLINE") and not cached.is_file():
            raise weights_error(self, weights, f"it is not in torch.hub's cache ({cached})")
        try:
            return torch.hub.load_state_dict_from_url(url, map_location="cpu", file_name=file_name,
                                                      weights_only=True)
        except OSError as e:  # URLError and HTTPError are OSErrors
            raise weights_error(self, weights, f"the download from {url} failed ({e})") from None

    def layers_of(self, inputs):
        """Every block's output (the last through the final norm, i.e. the encoder's output), mean over tokens."""
        audio = inputs["audio"]
        blocks, outputs = self.model.blocks, [[] for _ in self.model.blocks]
        hooks = [block.register_forward_hook(lambda _, __, out, k=k: outputs[k].append(out))
                 for k, block in enumerate(blocks)]
        try:
            self.model(audio.to(self.device))
        finally:
            for hook in hooks:
                hook.remove()
        # Dasheng runs long inputs in pieces of target_length frames: a block's tokens are its pieces' together.
        hidden = [torch.cat(pieces, dim=1) for pieces in outputs]
        hidden[-1] = self.model.norm(hidden[-1])
        return torch.stack([h.mean(dim=1) for h in hidden], dim=1)


def checkpointed(forward, x, **kwargs):
    """A block's forward whose activations are recomputed in the backward pass (only when training with grad)."""
    if not torch.is_grad_enabled():
        return forward(x, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, x, use_reentrant=False, **kwargs)
