"""The distillation configuration: a YAML file (options/distill_UniRain.yml documents every key) over defaults.

``load_config(path)`` returns a plain nested dict with every key present and checked; a wrong key or value
raises ConfigError naming the file and the dotted key. YAML is read with the project's option loader (an option
file is data, not code, and its aliases are bounded), the file and each ``--set`` value alike.
"""
import copy
import os

from unirain_data.distillation.prompt import DEFAULT_PROMPT, PromptError, check_template
from unirain_data.distillation.vote import check_min_yes, default_min_yes
from unirain_utils.options import OptionError, load_options, load_options_text

_UNSET = object()
JUDGE_TYPES = ('qwen_vl', 'chat')
INDEX_TYPES = ('auto', 'flat', 'ivf', 'hnsw')
DTYPES = ('auto', 'float32', 'float16', 'bfloat16')

DEFAULTS = {
    'name': 'distill',
    'device': 'auto',
    'offline': False,
    'references': {'root': None, 'manifest': None, 'db_dir': None, 'batch_size': 64},
    'candidates': {'manifest': None},
    'captioner': {'model': 'Salesforce/blip-image-captioning-base', 'prompt': None, 'max_new_tokens': 30,
                  'batch_size': 32, 'dtype': 'auto'},
    'embedder': {'model': 'ViT-B-32', 'pretrained': 'laion2b_s34b_b79k', 'model_config': None, 'cache_dir': None,
                 'batch_size': 64},
    'index': {'type': 'auto', 'flat_max': 100000, 'ivf_nlist': None, 'ivf_nprobe': 256, 'hnsw_m': 32,
              'hnsw_ef_construction': 80, 'hnsw_ef_search': 128, 'use_gpu': 'auto'},
    'retrieval': {'k1': 100, 'k2': 20, 'k3': 5, 'ssim_size': 256},
    'judges': [
        {'model': 'Qwen/Qwen2.5-VL-7B-Instruct', 'type': 'qwen_vl'},
        {'model': 'OpenGVLab/InternVL3-8B-hf', 'type': 'chat'},
        {'model': 'llava-hf/llava-v1.6-mistral-7b-hf', 'type': 'chat'},
    ],
    'prompt': DEFAULT_PROMPT,
    'vote': {'min_yes': None},
    'pipeline': {'work_dir': None, 'chunk_size': 128, 'io_workers': 4, 'max_side': 768, 'on_bad_image': 'error'},
    'output': {'manifest': None, 'include_references': False, 'retrieval_detail': 'full', 'report_dir': None,
               'report_examples': 4},
}
JUDGE_DEFAULTS = {'name': None, 'type': 'qwen_vl', 'model': None, 'dtype': 'auto', 'device_map': None,
                  'max_new_tokens': 8, 'min_pixels': 3136, 'max_pixels': 200704, 'attn_implementation': None}


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the file and the dotted key."""


def _merge(defaults, given, where, origin):
    """Defaults overlaid with the given mapping; an unknown key is an error (a typo, usually)."""
    if given is None:
        return copy.deepcopy(defaults)
    if not isinstance(given, dict):
        raise ConfigError(f'{origin}: {where or "the file"} must be a mapping, got {given!r}')
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f'{origin}: unknown key(s) {", ".join(_join(where, k) for k in unknown)}; known in '
                          f'{where or "the top level"}: {", ".join(sorted(defaults))}')
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(defaults[key], dict) and key != 'judges':
            merged[key] = _merge(defaults[key], value, _join(where, key), origin)
        else:
            merged[key] = value
    return merged


def _join(where, key):
    return f'{where}.{key}' if where else str(key)


class _Checker:
    def __init__(self, cfg, origin):
        self.cfg, self.origin = cfg, origin

    def fail(self, key, message):
        raise ConfigError(f'{self.origin}: {key}: {message}')

    def get(self, key):
        node = self.cfg
        for part in key.split('.'):
            node = node[part]
        return node

    def int(self, key, minimum, allow_none=False, value=_UNSET):
        value = self.get(key) if value is _UNSET else value
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, f'must be an integer >= {minimum}{" or null" if allow_none else ""}, got {value!r}')

    def choice(self, key, allowed, value=_UNSET):
        value = self.get(key) if value is _UNSET else value
        if value not in allowed:
            self.fail(key, f'{value!r} is not one of {", ".join(map(str, allowed))}')

    def text(self, key, allow_none=True, value=_UNSET):
        value = self.get(key) if value is _UNSET else value
        if value is None and allow_none:
            return
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f'must be non-empty text{" or null" if allow_none else ""}, got {value!r}')

    def flag(self, key):
        if not isinstance(self.get(key), bool):
            self.fail(key, f'must be true or false, got {self.get(key)!r}')


def _check_judges(cfg, check):
    judges = cfg['judges']
    if not isinstance(judges, list) or not judges:
        check.fail('judges', f'must be a non-empty list of judges (each with a model), got {judges!r}')
    merged, names = [], set()
    for i, judge in enumerate(judges):
        where = f'judges[{i}]'
        if isinstance(judge, str):
            judge = {'model': judge}
        judge = _merge(JUDGE_DEFAULTS, judge, where, check.origin)
        check.text(f'{where}.model', allow_none=False, value=judge['model'])
        judge['name'] = judge['name'] or os.path.basename(str(judge['model']).rstrip('/\\'))
        if judge['name'] in names:
            check.fail(f'{where}.name', f'two judges are named {judge["name"]!r}; give each a distinct name')
        names.add(judge['name'])
        check.choice(f'{where}.type', JUDGE_TYPES, value=judge['type'])
        check.choice(f'{where}.dtype', DTYPES, value=judge['dtype'])
        check.int(f'{where}.max_new_tokens', 1, value=judge['max_new_tokens'])
        check.int(f'{where}.min_pixels', 1, value=judge['min_pixels'])
        check.int(f'{where}.max_pixels', judge['min_pixels'], value=judge['max_pixels'])
        merged.append(judge)
    cfg['judges'] = merged


def check_config(cfg, origin='<config>'):
    """Check a merged configuration in place (and fill derived values); raise ConfigError on the first problem."""
    check = _Checker(cfg, origin)
    check.text('name', allow_none=False)
    check.flag('offline')
    device = cfg['device']
    if not isinstance(device, str) or not (device in ('auto', 'cpu', 'cuda') or device.startswith('cuda:')):
        check.fail('device', f'must be auto, cpu, cuda or cuda:N, got {device!r}')
    for key in ('references.root', 'references.manifest', 'references.db_dir', 'candidates.manifest',
                'captioner.model', 'captioner.prompt', 'embedder.model', 'embedder.pretrained',
                'embedder.model_config', 'embedder.cache_dir', 'pipeline.work_dir', 'output.manifest',
                'output.report_dir'):
        check.text(key, allow_none=key not in ('captioner.model', 'embedder.model'))
    if cfg['references']['root'] and cfg['references']['manifest']:
        check.fail('references', 'give root (a folder of real rainy photos) or manifest (real pairs), not both')
    for key in ('references.batch_size', 'captioner.max_new_tokens', 'captioner.batch_size', 'embedder.batch_size',
                'index.flat_max', 'index.ivf_nprobe', 'index.hnsw_m', 'index.hnsw_ef_construction',
                'index.hnsw_ef_search', 'retrieval.k2', 'retrieval.ssim_size', 'pipeline.chunk_size',
                'pipeline.io_workers', 'pipeline.max_side', 'output.report_examples'):
        check.int(key, 1 if key != 'output.report_examples' else 0)
    check.int('index.ivf_nlist', 1, allow_none=True)
    check.int('retrieval.k1', 1, allow_none=True)
    check.int('retrieval.k3', 0)
    if cfg['retrieval']['ssim_size'] < 11:
        check.fail('retrieval.ssim_size', f'must be at least 11 (the SSIM window), got {cfg["retrieval"]["ssim_size"]}')
    k1, k2, k3 = cfg['retrieval']['k1'], cfg['retrieval']['k2'], cfg['retrieval']['k3']
    if (k1 is not None and k2 > k1) or k3 > k2:
        check.fail('retrieval', f'needs k1 >= k2 >= k3, got k1={k1}, k2={k2}, k3={k3}')
    check.choice('captioner.dtype', DTYPES)
    check.choice('index.type', INDEX_TYPES)
    check.choice('index.use_gpu', ('auto', True, False))
    check.choice('output.retrieval_detail', ('full', 'final'))
    check.choice('pipeline.on_bad_image', ('error', 'skip'))
    check.flag('output.include_references')
    _check_judges(cfg, check)
    try:
        check_template(cfg['prompt'], cfg['retrieval']['k3'])
    except PromptError as exc:
        check.fail('prompt', str(exc))
    if cfg['vote']['min_yes'] is None:
        cfg['vote']['min_yes'] = default_min_yes(len(cfg['judges']))
    try:
        check_min_yes(cfg['vote']['min_yes'], len(cfg['judges']))
    except ValueError as exc:
        check.fail('vote.min_yes', str(exc))
    return cfg


def config_from_dict(given, origin='<config>'):
    return check_config(_merge(DEFAULTS, given, '', origin), origin)


def apply_overrides(given, overrides):
    """``['retrieval.k1=50', 'judges=[...]']``: each dotted key set to its YAML-parsed value (command-line --set)."""
    given = copy.deepcopy(given)
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'--set expects KEY=VALUE with a dotted key, got {item!r}')
        node, parts = given, key.strip().split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f'--set {item!r}: {part} is not a mapping')
        try:
            node[parts[-1]] = load_options_text(text, f'--set {key.strip()}')
        except OptionError as exc:
            raise ConfigError(str(exc)) from None
    return given


def load_config(path, overrides=()):
    try:
        given = load_options(path)
    except OptionError as exc:
        raise ConfigError(str(exc)) from None
    return config_from_dict(apply_overrides(given or {}, overrides), origin=path)


def require(cfg, key, what):
    """The value of a dotted key the current command needs, or a ConfigError saying what to set."""
    node = cfg
    for part in key.split('.'):
        node = node[part]
    if node in (None, ''):
        raise ConfigError(f'{key} is not set: {what}')
    return node
