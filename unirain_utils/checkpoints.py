"""Checkpoints are data, never code: every checkpoint is read with ``weights_only=True``.

torch's unpickler then rebuilds tensors and plain containers only. Passing the flag explicitly matters: torch
honours its ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` switch only where a caller leaves ``weights_only`` unset.
"""
import pickle

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, damaged, or holding code; the message names the file."""


def _unpickler_problem(exc):
    """(refused global or None, detail) from torch's weights-only error, whose other lines are generic advice."""
    text = str(exc)
    refused = next((line.strip() for line in text.splitlines() if 'GLOBAL' in line), None)
    if refused:
        return refused.split('. ')[0], None
    detail = text.split('WeightsUnpickler error:', 1)[-1].split('Check the documentation')[0]
    return None, ' '.join(detail.split()) or type(exc).__name__


def load_checkpoint(path, map_location=None, allowed_globals=()):
    """``torch.load(path, weights_only=True)``; a file that cannot be used raises CheckpointError naming it.

    ``allowed_globals``: classes a trusted writer puts in the file beside tensors (e.g. ``collections.Counter``
    in a scheduler state).
    """
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused, detail = _unpickler_problem(exc)
        if refused is None:
            raise CheckpointError(f'{path}: not a readable torch checkpoint (damaged?): {detail}') from exc
        raise CheckpointError(f'{path}: refused: it holds Python objects other than tensors and plain containers, '
                              f'and loading them could run code ({refused}); if you trust the file, re-save only '
                              'its tensors') from exc
    except OSError as exc:
        raise CheckpointError(f'{path}: cannot read it ({exc.strerror or exc})') from exc
    except (RuntimeError, EOFError, ValueError) as exc:  # torch's errors for truncated, empty or foreign files
        # torch's first sentence says what failed; the rest is generic advice
        reason = str(exc).split('. ')[0].splitlines()[0] if str(exc) else 'it ends early'
        raise CheckpointError(f'{path}: not a readable torch checkpoint (damaged?): {reason}') from exc
