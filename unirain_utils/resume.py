"""Exact resume: a run stopped and resumed trains on the same batches with the same randomness as one that never
stopped.

Three pieces, all here:
- ``load_resume_state`` replaces basicsr's (which calls ``torch.cuda.current_device()`` unconditionally): it loads
  the state with ``weights_only=True``, and ``--auto_resume`` walks the states newest to oldest, naming and
  skipping damaged ones;
- the training sampler skips the batches of the resumed epoch that were already trained on (basicsr restarts the
  epoch from its first batch);
- the python / numpy RNG states of every rank are saved in the training state, and the torch RNG is reseeded at
  every iteration from (manual_seed, rank, iteration) (``iteration_seed``), so nothing depends on what consumed
  random numbers before the stop.
``unirain_utils.compat`` installs the first two into basicsr; UniRainModel uses the third.
"""
import collections
import os
import random
import re
import sys

import numpy as np
import torch

from unirain_utils.checkpoints import CheckpointError, load_checkpoint

STATE_NAME = re.compile(r'(\d+)\.state')
# (epoch, iter) of the training state being resumed: load_resume_state sets it, the train loader reads it.
_resume_point = None
# warnings of load_resume_state, logged by the train loader once basicsr's logger exists
_pending_warnings = []


class ResumeStateError(RuntimeError):
    """No usable training state where one is asked for; the message names the file(s) and why."""


def iteration_seed(seed, rank, current_iter):
    """The torch seed of one training iteration: a function of (manual_seed, rank, iter) only."""
    entropy = [int(seed) % 2**64, int(rank), int(current_iter)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def host_rng_state():
    """Python and numpy RNG states, as plain values and tensors (loadable with weights_only=True)."""
    numpy_state = np.random.get_state(legacy=False)
    return {'python': random.getstate(),
            'numpy': {'key': torch.from_numpy(numpy_state['state']['key'].astype(np.int64)),
                      'pos': int(numpy_state['state']['pos']), 'has_gauss': int(numpy_state['has_gauss']),
                      'gauss': float(numpy_state['gauss'])}}


def set_host_rng_state(state):
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state['numpy']
    np.random.set_state({'bit_generator': 'MT19937',
                         'state': {'key': numpy_state['key'].numpy().astype(np.uint32), 'pos': numpy_state['pos']},
                         'has_gauss': numpy_state['has_gauss'], 'gauss': numpy_state['gauss']})


def _map_location(opt):
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def state_files(folder):
    """[(iter, path)] of the training states in ``folder``, newest first.

    Only ``<iter>.state`` names are states: a copy such as ``60_backup.state`` is not one.
    """
    found = []
    for name in os.listdir(folder):
        match = STATE_NAME.fullmatch(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found, reverse=True)


def _load_state(path, opt):
    state = load_checkpoint(path, map_location=_map_location(opt), allowed_globals=[collections.Counter])
    if not (isinstance(state, dict) and isinstance(state.get('iter'), int) and isinstance(state.get('epoch'), int)
            and 'optimizers' in state and 'schedulers' in state):
        raise CheckpointError(f'{path}: not a training state (no epoch, iter, optimizers and schedulers)')
    return state


def _check_networks(opt, current_iter):
    """Load the network files basicsr's ``check_resume`` will pick for ``current_iter`` (they are written before
    the state, without an atomic rename, so a full disk can leave a state beside a damaged network)."""
    ignored = opt['path'].get('ignore_resume_networks') or ()
    for network in (key for key in opt if key.startswith('network_') and key not in ignored):
        load_checkpoint(os.path.join(opt['path']['models'], f'net_{network[len("network_"):]}_{current_iter}.pth'),
                        map_location='cpu')


def _newest_usable_state(folder, opt):
    """(path, state) of the newest usable state in ``folder``, skipping damaged ones with a warning; (None, None)
    when it holds no state at all."""
    problems = []
    for current_iter, path in state_files(folder):
        try:
            state = _load_state(path, opt)
            _check_networks(opt, current_iter)
        except CheckpointError as exc:
            problems.append(str(exc))
            _warn(f'--auto_resume: skipping the training state of iter {current_iter}: {exc}')
            continue
        return path, state
    if problems:
        raise ResumeStateError(f'--auto_resume: no usable training state in {folder}: ' + '; '.join(problems))
    return None, None


def _warn(message):
    """Printed now (basicsr's logger does not exist yet) and logged once it does."""
    print(f'WARNING: {message}', file=sys.stderr, flush=True)
    _pending_warnings.append(message)


def load_resume_state(opt):
    """basicsr's ``load_resume_state`` without its CUDA call, with safe loading and damaged states handled;
    remembers the resume point for the sampler.

    ``--auto_resume`` takes the newest usable ``<iter>.state`` (a damaged one is named and skipped);
    ``path.resume_state`` must be usable. Schedulers keep a ``collections.Counter``, allowed explicitly.
    """
    global _resume_point
    from basicsr.utils import check_resume

    resume_state_path = resume_state = None
    _pending_warnings.clear()
    if opt['auto_resume']:
        folder = opt['path'].get('training_states') or os.path.join('experiments', opt['name'], 'training_states')
        if os.path.isdir(folder):
            resume_state_path, resume_state = _newest_usable_state(folder, opt)
            if resume_state_path is not None:
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']
        try:
            resume_state = _load_state(resume_state_path, opt)
        except CheckpointError as exc:
            raise ResumeStateError(f'path.resume_state: {exc}') from exc
    if resume_state is None:
        _resume_point = None
        return None
    check_resume(opt, resume_state['iter'])
    _resume_point = (resume_state['epoch'], resume_state['iter'])
    return resume_state


def skipping_sampler_iter(original_iter):
    """``EnlargedSampler.__iter__`` that drops the first ``resume_skip`` indices once."""
    def __iter__(self):
        skip, self.resume_skip = getattr(self, 'resume_skip', 0), 0
        indices = list(original_iter(self))
        return iter(indices[skip:])
    return __iter__


def resuming_dataloaders(original):
    """Wrap basicsr's ``create_train_val_dataloader``: skip the batches of the resumed epoch already done."""

    def create_train_val_dataloader(opt, logger):
        while _pending_warnings:
            logger.warning(_pending_warnings.pop(0))
        result = original(opt, logger)
        train_sampler = result[1]
        if _resume_point is not None and train_sampler is not None:
            epoch, current_iter = _resume_point
            batch = opt['datasets']['train']['batch_size_per_gpu']
            iters_per_epoch = len(train_sampler) // batch  # basicsr's train loader drops the last batch
            done = current_iter - epoch * iters_per_epoch
            if iters_per_epoch and 0 < done <= iters_per_epoch:
                train_sampler.resume_skip = done * batch
                logger.info(f'Resume: skipping the {done} batches of epoch {epoch} trained before the stop.')
            else:
                logger.warning(f'Resume: iter {current_iter} is not inside epoch {epoch} of {iters_per_epoch} '
                               'iterations (data changed?); the epoch restarts from its first batch.')
        return result

    return create_train_val_dataloader
