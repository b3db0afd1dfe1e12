"""Score the official PReNet weights on real rainy/clean pairs: a check that the PReNet arch is faithful.

    python tools/eval_prenet_official.py                                   # Rain100L weights, 200 Rain100L pairs
    python tools/eval_prenet_official.py --weights ../shared/data/prenet_official/Rain100H/net_latest.pth

Metrics follow the classic deraining convention (METHOD.md section 7): PSNR and SSIM on the Y channel
(MATLAB rgb2ycbcr), no border crop, uint8 images, with BasicSR's calculate_psnr / calculate_ssim. The output
is clamped to [0, 1] and turned into uint8 two ways: rounding (BasicSR's tensor2img) and truncation
(PReNet's official test script, which its published scores used).
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np
import torch
from tqdm import tqdm

import unirain_arch  # noqa: F401  (applies the basicsr patches before basicsr is imported)
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from unirain_arch.prenet_arch import PReNet

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data'))


def _y_scores(img, gt):
    return (calculate_psnr(img, gt, crop_border=0, test_y_channel=True),
            calculate_ssim(img, gt, crop_border=0, test_y_channel=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', default=os.path.join(SHARED, 'prenet_official', 'Rain100L', 'net_latest.pth'),
                        help='a PReNet state dict (the official files load as they are)')
    parser.add_argument('--pairs', default=os.path.join(SHARED, 'rain100l_train'),
                        help='folder with rainy/ and clean/ images of the same names')
    parser.add_argument('--recurrent-iter', type=int, default=6, help='PReNet stages (the official weights: 6)')
    parser.add_argument('--every', type=int, default=1, help='use every n-th pair (default: all)')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0: torch default)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='torch device (default: cuda when available)')
    parser.add_argument('--out', default='eval_prenet_official.json', help='JSON file with per-image scores')
    args = parser.parse_args()
    for path in (args.weights, os.path.join(args.pairs, 'rainy'), os.path.join(args.pairs, 'clean')):
        if not os.path.exists(path):
            sys.exit(f'eval_prenet_official: {path} does not exist')
    if args.threads:
        torch.set_num_threads(args.threads)

    net = PReNet(args.recurrent_iter)
    net.load_state_dict(torch.load(args.weights, map_location='cpu', weights_only=True))
    net = net.to(args.device).eval()
    names = sorted(os.listdir(os.path.join(args.pairs, 'rainy')))[::args.every]
    rows = []
    for name in tqdm(names, desc='pairs', unit='img'):
        rainy = cv2.imread(os.path.join(args.pairs, 'rainy', name))
        clean = cv2.imread(os.path.join(args.pairs, 'clean', name))
        if rainy is None or clean is None or rainy.shape != clean.shape:
            sys.exit(f'eval_prenet_official: {name}: missing, unreadable or mismatched rainy/clean pair')
        with torch.no_grad():
            out = net(img2tensor(rainy.astype(np.float32) / 255)[None].to(args.device)).cpu()
        truncated = (out[0].clamp(0, 1).permute(1, 2, 0).numpy()[:, :, ::-1] * 255).astype(np.uint8)
        row = {'name': name}
        for key, img in (('input', rainy), ('rounded', tensor2img(out)), ('truncated', truncated)):
            row[f'{key}_psnr_y'], row[f'{key}_ssim_y'] = _y_scores(img, clean)
        rows.append(row)

    summary = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != 'name'}
    print(f'{len(rows)} pairs from {args.pairs}, weights {args.weights}')
    print('Y-channel, no crop, uint8:  PSNR dB / SSIM')
    for key in ('input', 'rounded', 'truncated'):
        print(f'  {key:<10} {summary[f"{key}_psnr_y"]:.2f} / {summary[f"{key}_ssim_y"]:.4f}')
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump({'weights': args.weights, 'pairs': args.pairs, 'count': len(rows), 'mean': summary,
                   'images': rows}, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
