"""Loading named models (hub names or local folders/files) with a clear message when the weights are missing.

Every model of the pipeline is named by the user: a Hugging Face Hub name (``Salesforce/blip-image-captioning-
base``), a local folder holding a saved model, or for open_clip an architecture plus a pretrained tag or a
checkpoint file. Offline, a missing download becomes MissingWeightsError saying what to download and where
it is looked for, instead of a network stack trace.
"""
import contextlib
import os


class MissingWeightsError(RuntimeError):
    """A named model whose weights are neither in a local folder nor in the download cache."""


def hub_cache_dir():
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


@contextlib.contextmanager
def offline_mode(enabled):
    """While enabled, the Hugging Face Hub client answers from its cache only (no network, no retries)."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _looks_like_path(name):
    """Hub names are 'org/model' or 'model'; anything else is meant as a local path."""
    return os.path.isabs(name) or name.startswith(('.', '~')) or name.count('/') > 1 or '\\' in name


def load_hf(role, name, loader, offline):
    """``loader(name, local_files_only=offline)`` for a transformers model; missing weights -> MissingWeightsError.

    ``role`` names the model's job in messages ('captioner', 'judge qwen'). A local folder that exists is
    loaded as it is (its own errors are not about missing weights and pass through unchanged).
    """
    if os.path.isdir(os.path.expanduser(name)):
        return loader(os.path.expanduser(name), local_files_only=offline)
    try:
        with offline_mode(offline):
            return loader(name, local_files_only=offline)
    except (OSError, ValueError) as exc:
        if _looks_like_path(name):
            raise MissingWeightsError(f'{role}: model folder not found: {name}') from exc
        if _in_hub_cache(name):
            raise  # the model is there: this failure is not about missing weights
        raise MissingWeightsError(
            f'{role}: model {name!r} could not be loaded: its weights are not in the Hugging Face cache '
            f'({hub_cache_dir()}) and there is no local folder {os.path.abspath(name)}'
            f'{" (offline: true, so nothing is downloaded)" if offline else ""}.\n'
            f'  Download it on a machine with network access:  hf download {name}\n'
            f'  then copy the cache folder here (or point HF_HOME / HF_HUB_CACHE at it), or save the model to a '
            f'folder and give that folder as the model name.\n'
            f'  Loader said: {_first_line(exc)}') from exc


def missing_open_clip(model, pretrained, cache_dir, offline, exc):
    """MissingWeightsError for open_clip weights named by architecture + pretrained tag."""
    import open_clip
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
    if tag_cfg.get('hf_hub'):
        repo = tag_cfg['hf_hub'].rstrip('/')
        source = (f'They come from the Hugging Face Hub repository {repo} and are looked for in '
                  f'{cache_dir or hub_cache_dir()}.\n  Download them on a machine with network access:  '
                  f'hf download {repo}' + (f' --cache-dir {cache_dir}' if cache_dir else ''))
    elif tag_cfg.get('url'):
        source = (f'They come from {os.path.basename(tag_cfg["url"])} and are looked for in '
                  f'{cache_dir or os.path.expanduser("~/.cache/clip")}; copy that file there.')
    else:
        tags = open_clip.list_pretrained_tags_by_model(model)
        source = (f'{pretrained!r} is neither a pretrained tag of {model} ({", ".join(tags) or "it has none"}) '
                  f'nor an existing checkpoint file.')
    return MissingWeightsError(
        f'embedder: open_clip weights {pretrained!r} for {model!r} could not be loaded'
        f'{" (offline: true, so nothing is downloaded)" if offline else ""}. {source}\n'
        f'  Or give a checkpoint file as embedder.pretrained (or embedder.model: local-dir:FOLDER).\n'
        f'  Loader said: {_first_line(exc)}')


def _in_hub_cache(name):
    from huggingface_hub import try_to_load_from_cache
    try:
        return isinstance(try_to_load_from_cache(name, 'config.json'), str)
    except ValueError:  # not a valid repository name
        return False


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_device(name):
    """'auto' -> cuda when a GPU is visible (the local rank's one under torchrun), else cpu."""
    import torch
    if name == 'auto':
        if not torch.cuda.is_available():
            return torch.device('cpu')
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError(f'device {name!r} asked for, but no CUDA GPU is visible; use device: cpu (or auto)')
    return device


def resolve_dtype(name, device):
    """'auto' -> bfloat16 on a GPU that supports it, float32 otherwise (CPU half precision is slow)."""
    import torch
    if name == 'auto':
        if device.type == 'cuda' and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)
