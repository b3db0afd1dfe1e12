"""Vision-language judges: does the candidate's rain look like the real references'?

The judge protocol is one call, ``judge(candidate_image, reference_images, prompt) -> raw answer text``
(RGB PIL images), and a ``name``. A judge sees the reference images first (most similar first), then the
candidate, then the prompt (see ``prompt.py``). Parsing the answer and voting happen outside the judge, so
any object with this call and a ``name`` can take part (the tests use a scripted one).

Two transformers-backed judges, both ``AutoProcessor`` + ``AutoModelForImageTextToText`` with greedy decoding:
- ``QwenVLJudge`` (type ``qwen_vl``): Qwen2-VL / Qwen2.5-VL; images are sized by ``qwen_vl_utils`` within
  ``min_pixels`` .. ``max_pixels`` as Qwen's own recipe does;
- ``ChatVLJudge`` (type ``chat``): any chat model with images in its chat template (InternVL-hf,
  LLaVA-NeXT, ...); images are shrunk to at most ``max_pixels`` before the processor sees them.
"""
import math

import torch

from unirain_data.distillation.weights import load_hf, resolve_dtype


def shrink_to_pixels(image, max_pixels):
    """The image scaled down (aspect kept) to at most ``max_pixels`` pixels; smaller images are unchanged."""
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    return image.resize((max(1, int(width * scale)), max(1, int(height * scale))))


class ChatVLJudge:
    def __init__(self, name, model, dtype='auto', device=torch.device('cpu'), device_map=None, max_new_tokens=8,
                 min_pixels=3136, max_pixels=200704, attn_implementation=None, offline=False):
        from transformers import AutoModelForImageTextToText, AutoProcessor
        self.name, self.model_name = name, model
        self.max_new_tokens, self.min_pixels, self.max_pixels = max_new_tokens, min_pixels, max_pixels
        self.dtype = resolve_dtype(dtype, device)
        role = f'judge {name}'
        self.processor = load_hf(role, model, AutoProcessor.from_pretrained, offline)
        extra = {'attn_implementation': attn_implementation} if attn_implementation else {}
        if device_map is not None:
            extra['device_map'] = device_map
        self.model = load_hf(role, model, lambda n, **kw: AutoModelForImageTextToText.from_pretrained(
            n, dtype=self.dtype, **extra, **kw), offline)
        if device_map is None:
            self.model.to(device)
        self.model.eval()
        self.device = next(self.model.parameters()).device

    def messages(self, candidate_image, reference_images, prompt):
        content = [self._image(im) for im in reference_images] + [self._image(candidate_image)]
        return [{'role': 'user', 'content': content + [{'type': 'text', 'text': prompt}]}]

    def _image(self, image):
        return {'type': 'image', 'image': shrink_to_pixels(image, self.max_pixels)}

    def _inputs(self, messages):
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True, return_tensors='pt')

    @torch.inference_mode()
    def __call__(self, candidate_image, reference_images, prompt):
        inputs = self._inputs(self.messages(candidate_image, reference_images, prompt))
        inputs = inputs.to(self.device, dtype=self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs['input_ids'].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()


class QwenVLJudge(ChatVLJudge):
    def _image(self, image):
        return {'type': 'image', 'image': image, 'min_pixels': self.min_pixels, 'max_pixels': self.max_pixels}

    def _inputs(self, messages):
        from qwen_vl_utils import process_vision_info
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        patch = getattr(self.processor.image_processor, 'patch_size', 14)
        images, _ = process_vision_info(messages, image_patch_size=patch)
        return self.processor(text=[text], images=images, padding=True, return_tensors='pt')


JUDGE_CLASSES = {'qwen_vl': QwenVLJudge, 'chat': ChatVLJudge}


def build_judges(judge_cfgs, device, offline=False):
    """The configured judges (the config's ``judges`` list, already checked), loaded."""
    judges = []
    for cfg in judge_cfgs:
        cls = JUDGE_CLASSES[cfg['type']]
        judges.append(cls(cfg['name'], cfg['model'], dtype=cfg['dtype'], device=device, device_map=cfg['device_map'],
                          max_new_tokens=cfg['max_new_tokens'], min_pixels=cfg['min_pixels'],
                          max_pixels=cfg['max_pixels'], attn_implementation=cfg['attn_implementation'],
                          offline=offline))
    return judges
