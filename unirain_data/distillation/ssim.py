"""SSIM of a candidate's grayscale thumbnail against reference thumbnails, for the structural retrieval level.

The standard SSIM of Wang et al. (2004), as BasicSR's ``calculate_ssim`` and scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``
compute it: an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 255, and the
mean of the SSIM map over the positions where the window lies inside the image. Computed in float64 so
that rankings do not flip on rounding: with OpenCV's separable filter on the CPU (the candidate's own
statistics once, three filters per reference), with batched torch convolutions on a GPU.
"""
import cv2
import numpy as np
import torch

WINDOW, SIGMA = 11, 1.5
DATA_RANGE = 255.0
C1, C2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
_PAD = WINDOW // 2
_KERNEL = cv2.getGaussianKernel(WINDOW, SIGMA, cv2.CV_64F)


def _filter(image):
    """Gaussian filter at the 'valid' positions (the border rows/columns, where the window sticks out, cut)."""
    return cv2.sepFilter2D(image, cv2.CV_64F, _KERNEL, _KERNEL, borderType=cv2.BORDER_REFLECT)[_PAD:-_PAD, _PAD:-_PAD]


def _ssim_cpu(query, refs):
    x = np.asarray(query, np.float64)
    mu_x = _filter(x)
    var_x = _filter(x * x) - mu_x ** 2
    out = np.empty(len(refs))
    for i, ref in enumerate(refs):
        y = np.asarray(ref, np.float64)
        mu_y = _filter(y)
        var_y = _filter(y * y) - mu_y ** 2
        cov = _filter(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + C1) * (2 * cov + C2)) / ((mu_x ** 2 + mu_y ** 2 + C1) * (var_x + var_y + C2))
        out[i] = ssim_map.mean()
    return out


def _ssim_torch(query, refs, device):
    t = torch.arange(WINDOW, dtype=torch.float64, device=device) - (WINDOW - 1) / 2
    w = torch.exp(-t ** 2 / (2 * SIGMA ** 2))
    w = w / w.sum()

    def filt(v):
        v = torch.nn.functional.conv2d(v, w.view(1, 1, 1, -1))
        return torch.nn.functional.conv2d(v, w.view(1, 1, -1, 1))

    y = torch.as_tensor(np.asarray(refs)).to(device, torch.float64).unsqueeze(1)
    x = torch.as_tensor(np.asarray(query)).to(device, torch.float64)[None, None].expand_as(y)
    mu_x, mu_y = filt(x[:1]), filt(y)
    var_x = filt(x[:1] * x[:1]) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + C1) * (2 * cov + C2)) / ((mu_x ** 2 + mu_y ** 2 + C1) * (var_x + var_y + C2))
    return ssim_map.mean(dim=(1, 2, 3)).cpu().numpy()


def ssim_to_references(query, refs, device=torch.device('cpu')):
    """SSIM of ``query`` (S, S) with each of ``refs`` (K, S, S), grayscale in [0, 255], S >= 11. (K,) float64."""
    query, refs = np.asarray(query), np.asarray(refs)
    if query.ndim != 2 or refs.ndim != 3 or refs.shape[1:] != query.shape or min(query.shape) < WINDOW:
        raise ValueError(f'SSIM needs a (S, S) query and (K, S, S) references with S >= {WINDOW}, got '
                         f'{query.shape} and {refs.shape}')
    if len(refs) == 0:
        return np.zeros(0)
    return _ssim_torch(query, refs, device) if device.type == 'cuda' else _ssim_cpu(query, refs)
