"""The encoders from Hugging Face transformers: Whisper's encoder (OpenAI, MIT) and CLAP's audio tower
(LAION, laion/larger_clap_music, Apache-2.0). Each loads a hub name or a local folder holding the model
and its feature extractor (what save_pretrained writes); transformers is imported only here, on load."""
from pathlib import Path

import torch

from fma_genres.encoders.base import Encoder, looks_local, weights_error


class TransformersEncoder(Encoder):
    """A transformers model and its feature extractor, loaded from a hub name or a local folder."""
    model_class = ""  # the transformers class name of the whole model
    local_form = "folder (the model's config.json, weights and preprocessor_config.json)"

    def load(self, weights):
        import transformers  # lazy: an optional package that takes seconds to import

        path = Path(weights).expanduser()
        if looks_local(weights) and not path.is_dir():
            why = "a .pt file is the dasheng encoder's format" if path.is_file() else "no such folder"
            raise weights_error(self, weights, why)
        source = str(path) if path.is_dir() else weights
        try:
            self.features = transformers.AutoFeatureExtractor.from_pretrained(source)
            return self.submodule(getattr(transformers, self.model_class).from_pretrained(source))
        except OSError as e:  # transformers' "not found / cannot connect / not cached" errors are OSErrors
            raise weights_error(self, weights, str(e).split("\n")[0].rstrip(".")) from None

    def submodule(self, model):
        return model

    def inputs(self, audio):
        return self.features(list(audio.numpy()), sampling_rate=self.sample_rate, return_tensors="pt",
                             return_attention_mask=True)


class WhisperEncoder(TransformersEncoder):
    name, sample_rate, default_weights, model_class = "whisper", 16000, "openai/whisper-base", "WhisperModel"
    licence = "MIT"
    source = "the Hugging Face hub (https://huggingface.co/openai, e.g. openai/whisper-base)"

    def submodule(self, model):
        return model.get_encoder()  # the decoder is not needed: it is freed with the whole model

    def forward_layers(self, audio):
        """Each layer's output (the last one normed), averaged over the positions that hold the window's
        audio: Whisper's feature extractor pads every input to its 30 s, which the mean must leave out."""
        inputs = self.inputs(audio)
        hidden = self.model(inputs["input_features"].to(self.device), output_hidden_states=True).hidden_states[1:]
        # The two convolutions halve the frames: position i sees frames 2i and 2i+1.
        mask = inputs["attention_mask"][:, ::2].to(self.device, hidden[0].dtype).unsqueeze(-1)
        return torch.stack([(h * mask).sum(1) / mask.sum(1) for h in hidden], dim=1)


class ClapEncoder(TransformersEncoder):
    name, sample_rate, default_weights, model_class = "clap", 48000, "laion/larger_clap_music", "ClapModel"
    licence = "Apache-2.0"
    source = "the Hugging Face hub (https://huggingface.co/laion/larger_clap_music)"

    def forward_layers(self, audio):
        """CLAP's projected audio embedding (the one its text prompts are compared with), as one layer."""
        inputs = self.inputs(audio)
        features = self.model.get_audio_features(input_features=inputs["input_features"].to(self.device),
                                                 is_longer=inputs["is_longer"].to(self.device))
        return features.pooler_output.unsqueeze(1)
