"""CLIP features with open_clip: text embeddings of captions and image embeddings, both unit-normalised.

The model is named as open_clip names it: an architecture (``ViT-B-32``) with a pretrained tag
(``laion2b_s34b_b79k``) or a checkpoint file, or ``local-dir:FOLDER`` / ``hf-hub:org/repo``. A custom
architecture can be registered from a JSON file (``model_config``; its file stem is the model name).
Unit-normalised text embeddings make the semantic level's L2 distance rank like cosine similarity.
"""
import os

import numpy as np
import torch

from unirain_data.distillation.config import ConfigError
from unirain_data.distillation.weights import MissingWeightsError, missing_open_clip, offline_mode


def register_model_config(path):
    """Add an open_clip architecture from a JSON file (embed_dim, vision_cfg, text_cfg); returns its name."""
    import open_clip
    if not os.path.isfile(path):
        raise FileNotFoundError(f'embedder.model_config: file not found: {path}')
    open_clip.add_model_config(path)
    name = os.path.splitext(os.path.basename(path))[0]
    if name not in open_clip.list_models():
        raise ConfigError(f'embedder.model_config: {path} is not an open_clip model config '
                         '(a JSON object with embed_dim, vision_cfg and text_cfg)')
    return name


class Embedder:
    def __init__(self, model, pretrained=None, model_config=None, cache_dir=None, batch_size=64,
                 device=torch.device('cpu'), offline=False):
        import open_clip
        if model_config:
            register_model_config(model_config)
        self.name, self.pretrained = model, pretrained
        self.device, self.batch_size = device, batch_size
        try:
            with offline_mode(offline):
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=pretrained, device=device, cache_dir=cache_dir)
        except RuntimeError as exc:
            if pretrained and not os.path.isfile(pretrained) and not model.startswith(('local-dir:', 'hf-hub:')) \
                    and model.replace('/', '-') in open_clip.list_models():
                raise missing_open_clip(model, pretrained, cache_dir, offline, exc) from exc
            raise
        except OSError as exc:
            raise MissingWeightsError(f'embedder: cannot load open_clip model {model!r} ({exc})') from exc
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(['']).to(device)).shape[-1])

    @staticmethod
    def _normalise(features):
        features = features.float()
        return (features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def images(self, images):
        """(N, D) float32 unit vectors for N RGB PIL images."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
            out.append(self._normalise(self.model.encode_image(batch.to(self.device))))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def texts(self, texts):
        """(N, D) float32 unit vectors for N strings (longer ones are cut at the model's context length)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]))
            out.append(self._normalise(self.model.encode_text(tokens.to(self.device))))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
