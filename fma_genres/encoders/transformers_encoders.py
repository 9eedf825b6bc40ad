"""The encoders from Hugging Face transformers: Whisper's encoder (OpenAI, MIT) and CLAP's audio tower
(LAION, laion/larger_clap_music, Apache-2.0), whose text tower embeds zero-shot prompts. Each loads a hub
name or a local folder holding the model and its feature extractor (what save_pretrained writes; CLAP's
prompts also need its tokenizer); transformers is imported only here, on load."""
import functools
import importlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fma_genres.encoders.base import Encoder, looks_local, weights_error


class TransformersEncoder(Encoder):
    """A transformers model and its feature extractor, loaded from a hub name or a local folder."""
    model_class = ""  # the transformers class name of the whole model
    model_type = ""   # its config.json's model_type: other weights would load as a random model, with a warning
    local_form = "folder (the model's config.json, weights and preprocessor_config.json)"
    augmentation = "specaugment"  # its input is a feature extractor's spectrogram: masked bands and frames
    module_class = ""  # "module:Class" of the torch module build() makes from the model's config

    def load(self, weights):
        import transformers  # lazy: an optional package that takes seconds to import

        path = Path(weights).expanduser()
        if looks_local(weights) and not path.is_dir():
            why = "a .pt file is the dasheng encoder's format" if path.is_file() else "no such folder"
            raise weights_error(self, weights, why)
        self.location = str(path) if path.is_dir() else weights
        try:
            model_type = transformers.AutoConfig.from_pretrained(self.location).model_type
            if model_type != self.model_type:
                raise weights_error(self, weights, f"they are a {model_type} model, not {self.name}")
            self.features = transformers.AutoFeatureExtractor.from_pretrained(self.location)
            return self.submodule(getattr(transformers, self.model_class).from_pretrained(self.location))
        except OSError as e:  # transformers' "not found / cannot connect / not cached" errors are OSErrors
            raise weights_error(self, weights, first_line(e)) from None

    def submodule(self, model):
        return model

    def architecture(self):
        return {"config": json.loads(self.model.config.to_json_string(use_diff=False)),
                "features": json.loads(self.features.to_json_string())}

    def build(self, architecture):
        import transformers  # lazy: an optional package

        features = architecture["features"]
        self.features = getattr(transformers, features["feature_extractor_type"]).from_dict(features)
        module, name = self.module_class.split(":")
        config = getattr(transformers, self.model_class.replace("Model", "Config")).from_dict(architecture["config"])
        return getattr(importlib.import_module(module), name)(config)

    def inputs(self, audio):
        """The feature extractor's output (numpy, on the CPU: it is no part of what trains)."""
        return self.features(list(audio.detach().float().cpu().numpy()), sampling_rate=self.sample_rate,
                             return_tensors="pt", return_attention_mask=True)


def first_line(error):
    return str(error).split("\n")[0].rstrip(".")


class WhisperEncoder(TransformersEncoder):
    name, sample_rate, default_weights, model_class = "whisper", 16000, "openai/whisper-base", "WhisperModel"
    model_type = "whisper"
    licence = "MIT"
    source = "the Hugging Face hub (https://huggingface.co/openai, e.g. openai/whisper-base)"
    module_class = "transformers.models.whisper.modeling_whisper:WhisperEncoder"
    front_end, blocks = ("conv1.", "conv2.", "embed_positions."), "layers"

    def submodule(self, model):
        return model.get_encoder()  # the decoder is not needed: it is freed with the whole model

    def enable_checkpointing(self):
        self.model.activation_checkpointing_enable({"use_reentrant": False})

    def layers_of(self, inputs):
        """Each layer's output (the last one normed), averaged over the positions that hold the window's
        audio: Whisper's feature extractor pads every input to its 30 s, which the mean must leave out."""
        hidden = self.model(inputs["input_features"].to(self.device), output_hidden_states=True).hidden_states[1:]
        # The two convolutions halve the frames: position i sees frames 2i and 2i+1.
        mask = inputs["attention_mask"][:, ::2].to(self.device, hidden[0].dtype).unsqueeze(-1)
        return torch.stack([(h * mask).sum(1) / mask.sum(1) for h in hidden], dim=1)


class ClapEncoder(TransformersEncoder):
    name, sample_rate, default_weights, model_class = "clap", 48000, "laion/larger_clap_music", "ClapModel"
    model_type = "clap"
    local_form = "folder (the model's config.json, weights, preprocessor_config.json and, for zero-shot, its tokenizer)"
    licence = "Apache-2.0"
    source = "the Hugging Face hub (https://huggingface.co/laion/larger_clap_music)"
    module_class = "fma_genres.encoders.transformers_encoders:ClapAudio"
    front_end = ("audio_model.audio_encoder.patch_embed.", "audio_model.audio_encoder.batch_norm.")
    blocks = "audio_model.audio_encoder.layers"
    checkpointing = False  # transformers' CLAP does not support gradient checkpointing

    def submodule(self, model):
        return ClapAudio(model.config, model.audio_model, model.audio_projection)  # the text tower is freed

    def layers_of(self, inputs):
        """CLAP's projected audio embedding (the one its text prompts are compared with), as one layer."""
        return self.model(inputs["input_features"].to(self.device), inputs["is_longer"].to(self.device)).unsqueeze(1)

    @torch.inference_mode()
    def embed_text(self, prompts):
        """float32 (prompts, dim) on the CPU: CLAP's projected text embeddings (normalised), the audio's peers."""
        import transformers

        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.location)
        except (OSError, ValueError) as e:  # not cached offline, or unreadable files
            raise weights_error(self, self.weights, f"no tokenizer for the text prompts ({first_line(e)})") from None
        inputs = tokenizer(list(prompts), padding=True, return_tensors="pt")
        # A folder without tokenizer files loads as an empty tokenizer, silently: every prompt gets the same tokens.
        if len(set(map(tuple, inputs["input_ids"].tolist()))) < len(set(prompts)):
            raise weights_error(self, self.weights, "no tokenizer for the text prompts: different prompts get the same "
                                "tokens (the folder lacks tokenizer.json, or vocab.json and merges.txt)")
        features = self.text_model.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                                     attention_mask=inputs["attention_mask"].to(self.device))
        return features.pooler_output.float().cpu()

    @property
    def logit_scale(self):
        """CLAP's learned temperature of audio-to-text cosine similarities (exp of logit_scale_a)."""
        return float(self.text_model.logit_scale_a.exp())

    @functools.cached_property
    def text_model(self):
        """The whole ClapModel, loaded again for its text tower: only zero-shot needs it (probes and fine-tuning
        hold the audio tower alone)."""
        import transformers

        return transformers.ClapModel.from_pretrained(self.location).eval().requires_grad_(False).to(self.device)


class ClapAudio(torch.nn.Module):
    """CLAP's audio tower and projection (ClapModel.get_audio_features), without its text tower."""

    def __init__(self, config, audio_model=None, audio_projection=None):
        super().__init__()
        from transformers.models.clap.modeling_clap import ClapAudioModel, ClapProjectionLayer

        self.config = config
        self.audio_model = audio_model or ClapAudioModel(config.audio_config)
        self.audio_projection = audio_projection or ClapProjectionLayer(config.audio_config)

    def forward(self, input_features, is_longer):
        pooled = self.audio_model(input_features=input_features, is_longer=is_longer).pooler_output
        return F.normalize(self.audio_projection(pooled), dim=-1)
