"""The model-backed stages on tiny random models, and the messages users get when weights are missing offline."""
import os

import pytest
from PIL import Image

from test_distill_tiny_models import assets, single_thread, tiny_config, write_config  # noqa: F401  (fixtures)
from tool_loader import load_tool
from unirain_data.distillation.prompt import DEFAULT_PROMPT, build_prompt, parse_answer
from unirain_data.distillation.vote import majority_vote
from unirain_data.distillation.weights import MissingWeightsError


def _images(assets, n, role='cand'):  # noqa: F811
    folder = os.path.join(assets['folder'], role, 'input')
    return [Image.open(os.path.join(folder, f'{role}{i:02d}.png')).convert('RGB') for i in range(n)]


def test_blip_captions_are_batch_independent_and_differ(assets):  # noqa: F811
    from unirain_data.distillation.captioner import Captioner
    images = _images(assets, 8)
    captioner = Captioner(assets['blip'], max_new_tokens=6, batch_size=8, offline=True)
    captions = captioner(images)
    assert len(captions) == 8 and len(set(captions)) > 1
    captioner.batch_size = 3
    assert captioner(images) == captions
    assert not captioner.chat


def test_chat_vlm_as_captioner_strips_its_prompt(assets):  # noqa: F811
    from unirain_data.distillation.captioner import Captioner
    images = _images(assets, 5)
    captioner = Captioner(assets['qwen'], max_new_tokens=2, batch_size=5, offline=True)
    assert captioner.chat and captioner.prompt
    captions = captioner(images)
    # the tiny Qwen only knows 'yes' and 'no': two of them, nothing of the echoed prompt
    assert all(c.replace('yes', '').replace('no', '') == '' and c for c in captions), captions
    captioner.batch_size = 1  # left padding: batched captions equal one-by-one ones
    assert captioner(images) == captions


def test_real_tiny_judges_answers_parse_and_vote(assets):  # noqa: F811
    from unirain_data.distillation.judges import ChatVLJudge, QwenVLJudge
    images = _images(assets, 12)  # all four rain types
    refs = _images(assets, 2, 'real')
    judges = [QwenVLJudge('qwen', assets['qwen'], max_new_tokens=1, max_pixels=12544, offline=True),
              ChatVLJudge('chat', assets['qwen'], max_new_tokens=1, max_pixels=12544, offline=True),
              ChatVLJudge('rambling', assets['qwen'], max_new_tokens=3, max_pixels=12544, offline=True)]
    outcomes = set()
    for i, image in enumerate(images):
        prompt = build_prompt(DEFAULT_PROMPT, len(refs), 'DRS')
        raw = [judge(image, refs, prompt) for judge in judges]
        parsed = [parse_answer(a) for a in raw]
        assert parsed[0] in ('yes', 'no') and parsed[1] in ('yes', 'no'), raw
        assert parsed[2] is None and len(raw[2]) > 3, raw  # 'yesnoyes': not one word, an abstention
        vote = majority_vote(parsed, 2)
        assert vote.abstain == 1 and vote.verdict == ('kept' if parsed[:2] == ['yes', 'yes'] else 'rejected')
        outcomes.add(vote.verdict)
    assert outcomes == {'kept', 'rejected'}


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    cache = str(tmp_path / 'hub-cache')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', cache)
    return cache


def test_missing_weights_name_what_to_download_and_where(empty_hub_cache):
    from unirain_data.distillation.captioner import Captioner
    from unirain_data.distillation.embedder import Embedder
    from unirain_data.distillation.judges import QwenVLJudge
    with pytest.raises(MissingWeightsError) as caught:
        Captioner('Salesforce/blip-image-captioning-base', offline=True)
    message = str(caught.value)
    for part in ('captioner', 'hf download Salesforce/blip-image-captioning-base', empty_hub_cache, 'offline'):
        assert part in message
    with pytest.raises(MissingWeightsError) as caught:
        QwenVLJudge('qwen', 'Qwen/Qwen2.5-VL-7B-Instruct', offline=True)
    assert 'judge qwen' in str(caught.value) and 'hf download Qwen/Qwen2.5-VL-7B-Instruct' in str(caught.value)
    with pytest.raises(MissingWeightsError) as caught:
        Embedder('ViT-B-32', 'laion2b_s34b_b79k', offline=True)
    message = str(caught.value)
    for part in ('laion2b_s34b_b79k', 'hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K', empty_hub_cache,
                 'checkpoint file'):
        assert part in message
    with pytest.raises(MissingWeightsError, match='neither a pretrained tag'):
        Embedder('ViT-B-32', 'no_such_tag', offline=True)
    with pytest.raises(MissingWeightsError, match='model folder not found: ./models/blip'):
        Captioner('./models/blip', offline=True)


def test_cli_reports_missing_weights_and_exits_2(assets, tmp_path, capsys, empty_hub_cache):  # noqa: F811
    cfg = tiny_config(assets, str(tmp_path))
    cfg['captioner'] = {'model': 'Salesforce/blip-image-captioning-base'}
    opt = write_config(cfg, str(tmp_path / 'c.yml'))
    assert load_tool('distill').main(['build-refs', '-opt', opt, '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: captioner: model ') and 'hf download Salesforce/blip-image-captioning-base' in err
    assert not os.path.exists(cfg['references']['db_dir'])
