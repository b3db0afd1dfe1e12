"""Captions T for references and candidates: BLIP (the paper's choice) or any transformers image-to-text model.

Two kinds of models are handled through ``AutoProcessor`` + ``AutoModelForImageTextToText``:
- captioning models without a chat template (BLIP, BLIP-2): the image alone, or ``prompt`` as a text prefix
  (BLIP's conditional captioning, e.g. 'a photography of');
- chat vision-language models (Qwen2.5-VL, ...): one user turn with the image and ``prompt`` as instruction.
Decoding is greedy, so a caption is a function of the image (and the model).
"""
from typing import List

import torch

from unirain_data.distillation.weights import load_hf, resolve_dtype

DEFAULT_CHAT_PROMPT = 'Describe this photo in one short sentence.'


class Captioner:
    def __init__(self, model, prompt=None, max_new_tokens=30, batch_size=32, device=torch.device('cpu'),
                 dtype='auto', offline=False):
        from transformers import AutoModelForImageTextToText, AutoProcessor
        self.name = model
        self.device = device
        self.dtype = resolve_dtype(dtype, device)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.processor = load_hf('captioner', model, AutoProcessor.from_pretrained, offline)
        self.model = load_hf('captioner', model, lambda name, **kw: AutoModelForImageTextToText.from_pretrained(
            name, dtype=self.dtype, **kw), offline).to(device).eval()
        self.chat = bool(getattr(self.processor, 'chat_template', None))
        self.prompt = prompt or (DEFAULT_CHAT_PROMPT if self.chat else None)
        if self.chat:
            # batched generation with a decoder-only model needs the padding on the left
            self.processor.tokenizer.padding_side = 'left'

    def _inputs(self, images):
        if self.chat:
            message = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': self.prompt}]}]
            text = self.processor.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
            return self.processor(text=[text] * len(images), images=images, padding=True, return_tensors='pt')
        if self.prompt:
            return self.processor(images=images, text=[self.prompt] * len(images), padding=True, return_tensors='pt')
        return self.processor(images=images, return_tensors='pt')

    @torch.inference_mode()
    def _caption(self, images):
        inputs = self._inputs(images).to(self.device, dtype=self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_ids = inputs.get('input_ids')
        if prompt_ids is not None and out.shape[1] > prompt_ids.shape[1] and torch.equal(
                out[:, :prompt_ids.shape[1]], prompt_ids):
            out = out[:, prompt_ids.shape[1]:]  # decoder-only models echo the prompt
        return [text.strip() for text in self.processor.batch_decode(out, skip_special_tokens=True)]

    def __call__(self, images) -> List[str]:
        """One caption per RGB PIL image, in order."""
        captions = []
        for start in range(0, len(images), self.batch_size):
            captions += self._caption(images[start:start + self.batch_size])
        return captions
