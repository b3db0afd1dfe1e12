"""Tiny randomly initialised stand-ins for the distillation's models, and a toy rain data set, built offline.

For tests and benchmarks on machines without the real weights (nothing here downloads anything):
- an open_clip architecture registered from a JSON file (64-d embeddings) and its random checkpoint;
- a tiny BLIP captioner (toy WordPiece vocabulary) saved as a transformers folder;
- a tiny Qwen2.5-VL judge (toy byte-level BPE with Qwen's special tokens, Qwen2VLImageProcessor) whose
  output layer only knows 'yes' and 'no': its first answer token is 'yes' or 'no' depending on the images;
- small real-looking rainy photos with clean versions, and candidates of all four rain types.
Their answers and captions mean nothing; they exercise every code path at the real models' interfaces.
"""
import json
import os

import cv2
import numpy as np
from PIL import Image

from unirain_utils.image_io import write_image
from unirain_utils.rain_types import RAIN_TYPES

QWEN_SPECIAL = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>', '<|image_pad|>',
                '<|video_pad|>']
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TINY_CLIP = {'embed_dim': 64,
             'vision_cfg': {'image_size': 64, 'layers': 2, 'width': 64, 'patch_size': 16, 'head_width': 32},
             'text_cfg': {'context_length': 16, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 2}}


def build_clip(folder):
    import open_clip
    import torch
    config = os.path.join(folder, 'UniRainTinyCLIP.json')
    with open(config, 'w') as f:
        json.dump(TINY_CLIP, f)
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model('UniRainTinyCLIP', pretrained=None)
    checkpoint = os.path.join(folder, 'tiny_clip.pt')
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


def build_blip(folder):
    import torch
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)
    words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '[DEC]'] + (
        'a the rain street car night city road wet window drops light of in on with at photo view').split()
    vocab = os.path.join(folder, 'blip_vocab.txt')
    with open(vocab, 'w') as f:
        f.write('\n'.join(words) + '\n')
    tokenizer = BertTokenizerFast(vocab, bos_token='[DEC]')
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in ('[PAD]', '[SEP]', '[DEC]')}
    config = BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=ids['[DEC]'], eos_token_id=ids['[SEP]'], pad_token_id=ids['[PAD]'],
                         sep_token_id=ids['[SEP]']),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=32, image_text_hidden_size=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():  # larger random weights: captions that differ from image to image
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    path = os.path.join(folder, 'tiny-blip')
    model.save_pretrained(path)
    BlipProcessor(image_processor=BlipImageProcessor(size={'height': 32, 'width': 32}), tokenizer=tokenizer) \
        .save_pretrained(path)
    return path


def build_qwen(folder, probe_images):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=QWEN_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(['yes no yes no does the rain look real user assistant images photographs'] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token='<|im_end|>', pad_token='<|endoftext|>')
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_parameters={'rope_type': 'default', 'mrope_section': [2, 3, 3], 'rope_theta': 10000.0},
                         bos_token_id=ids['<|endoftext|>'], eos_token_id=ids['<|im_end|>'],
                         pad_token_id=ids['<|endoftext|>']),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids['<|image_pad|>'], video_token_id=ids['<|video_pad|>'],
        vision_start_token_id=ids['<|vision_start|>'], vision_end_token_id=ids['<|vision_end|>'])
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    path = os.path.join(folder, 'tiny-qwen2.5-vl')
    model.save_pretrained(path)
    processor.save_pretrained(path)
    # Output layer: logit +h.v for 'yes', -h.v for 'no', 0 for every other token, so the first answer token is
    # 'yes' or 'no'. v is orthogonal to the mean last hidden state of judge prompts about the test images: the
    # answer then follows what differs between inputs (the images), not what they share.
    from unirain_data.distillation.judges import QwenVLJudge
    from unirain_data.distillation.prompt import DEFAULT_PROMPT, build_prompt
    judge = QwenVLJudge('probe', path, min_pixels=3136, max_pixels=12544, offline=True)
    hidden = []
    for i in range(8):
        images = [Image.open(p).convert('RGB') for p in probe_images[3 * i:3 * i + 3]]
        inputs = judge._inputs(judge.messages(images[0], images[1:], build_prompt(DEFAULT_PROMPT, 2, RAIN_TYPES[i % 4])))
        with torch.no_grad():
            hidden.append(judge.model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1])
    common = torch.stack(hidden).mean(0)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    direction -= (direction @ common) / (common @ common) * common
    yes, no = tokenizer.convert_tokens_to_ids('yes'), tokenizer.convert_tokens_to_ids('no')
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[yes] = 10 * direction / direction.norm()
        model.lm_head.weight[no] = -10 * direction / direction.norm()
    model.save_pretrained(path)
    return path


def rain_image(rng, night, drops, size=48):
    """A clean gradient scene and its rainy version (streaks or drops), BGR uint8."""
    base = np.linspace(0.2, 0.9, size)[None, :, None] * np.array(rng.uniform(0.5, 1.0, 3))[None, None]
    clean = np.repeat(base, size, axis=0) * (0.35 if night else 1.0)
    clean = clean + rng.uniform(0, 0.08) * np.sin(np.arange(size) / rng.uniform(2, 6))[:, None, None]
    clean = (np.clip(clean, 0, 1) * 255).astype(np.uint8)
    rainy = clean.copy()
    if drops:
        for _ in range(rng.integers(4, 9)):
            center = tuple(int(v) for v in rng.integers(4, size - 4, 2))
            cv2.circle(rainy, center, int(rng.integers(2, 5)), (235, 235, 235), -1)
    else:
        angle = rng.uniform(-0.4, 0.4)
        for _ in range(rng.integers(12, 30)):
            x, y = rng.integers(0, size, 2)
            length = rng.integers(6, 14)
            end = (int(x + length * np.sin(angle)), int(y + length * np.cos(angle)))
            cv2.line(rainy, (int(x), int(y)), end, (220, 220, 220), 1)
    return clean, rainy


def build_data(folder, num_references=24, num_candidates=24, size=48):
    """Manifests (and images) of real-looking references and candidates: {'real': path, 'cand': path}."""
    rng = np.random.default_rng(0)
    paths = {}
    for role, count in (('real', num_references), ('cand', num_candidates)):
        entries = []
        for split in ('input', 'target'):
            os.makedirs(os.path.join(folder, role, split), exist_ok=True)
        for i in range(count):
            rain_type = RAIN_TYPES[i % 4]
            clean, rainy = rain_image(rng, night=rain_type.startswith('N'), drops=rain_type.endswith('D'), size=size)
            name = f'{role}{i:02d}.png'
            write_image(os.path.join(folder, role, 'input', name), rainy)
            write_image(os.path.join(folder, role, 'target', name), clean)
            entries.append({'lq': f'input/{name}', 'gt': f'target/{name}', 'type': rain_type,
                            'source': 'real-rain' if role == 'real' else f'synth-{"ab"[i % 2]}'})
        manifest = os.path.join(folder, role, 'manifest.jsonl')
        with open(manifest, 'w') as f:
            f.writelines(json.dumps(e) + '\n' for e in entries)
        paths[role] = manifest
    return paths


def build_tiny_assets(folder, num_references=24, num_candidates=24, size=48):
    """Every stand-in above in ``folder``; returns their paths (the keys tiny_config reads)."""
    os.makedirs(folder, exist_ok=True)
    clip_config, clip_checkpoint = build_clip(folder)
    data = build_data(folder, num_references, num_candidates, size)
    images = [os.path.join(folder, role, 'input', f'{role}{i:02d}.png') for role, count in
              (('real', num_references), ('cand', num_candidates)) for i in range(count)]
    probe = (images * 24)[:24]  # 8 judge prompts of 3 images
    return {'folder': folder, 'clip_config': clip_config, 'clip_checkpoint': clip_checkpoint,
            'blip': build_blip(folder), 'qwen': build_qwen(folder, probe), 'references': data['real'],
            'candidates': data['cand']}


def tiny_config(assets, work, **sections):
    """A config dict running on the tiny models; ``sections`` override top-level keys."""
    cfg = {
        'name': 'tiny', 'device': 'cpu', 'offline': True,
        'references': {'manifest': assets['references'], 'db_dir': os.path.join(work, 'refdb'), 'batch_size': 8},
        'candidates': {'manifest': assets['candidates']},
        'captioner': {'model': assets['blip'], 'max_new_tokens': 6, 'batch_size': 8},
        'embedder': {'model': 'UniRainTinyCLIP', 'pretrained': assets['clip_checkpoint'],
                     'model_config': assets['clip_config'], 'batch_size': 8},
        'retrieval': {'k1': 8, 'k2': 4, 'k3': 2, 'ssim_size': 32},
        'judges': [{'name': 'qwen', 'type': 'qwen_vl', 'model': assets['qwen'], 'max_new_tokens': 1,
                    'min_pixels': 3136, 'max_pixels': 12544},
                   {'name': 'chat', 'type': 'chat', 'model': assets['qwen'], 'max_new_tokens': 1,
                    'max_pixels': 12544}],
        'pipeline': {'work_dir': os.path.join(work, 'work'), 'chunk_size': 5, 'io_workers': 2, 'max_side': 64},
        'output': {'manifest': os.path.join(work, 'out', 'distilled.jsonl'), 'report_examples': 2},
    }
    cfg.update(sections)
    return cfg
