"""Mixed-precision training (``train.amp``): autocast, and for fp16 a gradient scaler whose state is resumable.

``bf16`` keeps fp32's exponent range, so gradients need no scaling. ``fp16`` does: its gradients underflow,
so the loss is multiplied by a scale before backward, gradients are unscaled before the optimizer step,
a step with inf/nan gradients is skipped and the scale adapts (``torch.amp.GradScaler``). Both work on
CUDA and on CPU (CPU autocast computes fp16 slowly; bf16 is the CPU choice).
"""
import contextlib

import torch

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def amp_dtype(value, key='train.amp'):
    """The autocast dtype named by an option value: None (``~``: off), torch.bfloat16 or torch.float16."""
    if value is None:
        return None
    if isinstance(value, str) and value in AMP_DTYPES:
        return AMP_DTYPES[value]
    raise ValueError(f'{key}: {value!r} is not one of {", ".join(AMP_DTYPES)} or ~ (off)')


class MixedPrecision:
    """Autocast around the forward and the loss, and the fp16 gradient scaler, for one device.

    ``dtype`` None makes every method a plain fp32 step, so callers need no branches.
    """

    def __init__(self, dtype, device):
        self.dtype = dtype
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if dtype is torch.float16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def full_precision(self):
        """Inside ``autocast()``: compute in fp32 again (loss statistics that must not lose precision)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def backward(self, loss):
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer):
        """The optimizer step; with fp16 unscaled first, skipped on inf/nan gradients, then the scale adapts."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self):
        """The scaler's state (scale, growth tracker, ...), or None without a scaler."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state):
        self.scaler.load_state_dict(state)
