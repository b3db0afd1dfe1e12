"""The ablation a user can rerun: does MoE + CoBa beat uniform weights and a dense backbone on four rain types?

Also the harness for comparing reweighting strategies at an equal budget (``--configs
unirain_coba,unirain_uniform,unirain_tur``: same arch, data, batches and initialisation; only the strategy differs).

One fixed four-type training set (real Rain100L training pairs for DRS; DRD / NRS / NRD synthesised on Kodak24),
one fixed iteration budget, several configurations trained with ``basicsr train``, each evaluated on the same
held-out test images (per-type, average and worst-type PSNR, RGB and Y). Everything lands in ``--out``:
``data/`` (manifests and synthesised images), ``options/`` (the generated option files, readable and rerunnable),
``experiments/`` (BasicSR's folders), ``report/`` (compare.py's tables, JSON and grids), ``ablation.md`` (per-type,
average and worst-type PSNR-RGB) and ``ablation.json`` (budget, training seconds, table, every result).

    python tools/run_ablation.py --data-root datasets --out ablation --threads 1        # CPU, ~25 min per config
    python tools/run_ablation.py --data-root datasets --out ablation_gpu --preset small --iters 20000 --num-gpu 1

``--baseline NAME=SPEC`` scores other models on the same test split (e.g. PReNet's official weights) and
``--readme README.md`` writes the README's results block from that one evaluation.

Rerunning the same command resumes: finished configurations are not retrained, interrupted ones resume.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from unirain_data.manifest import (ManifestEntry, natural_key, read_manifest, resolve_path,  # noqa: E402
                                   write_manifest)
from unirain_utils.rain_types import RAIN_TYPES  # noqa: E402

# name: (arch, strategy, arch overrides)
CONFIGS = {
    'unirain_coba': ('UniRain', 'CoBaLoss', {}),
    'unirain_uniform': ('UniRain', 'UniformTypeLoss', {}),
    'unirain_tur': ('UniRain', 'TURLoss', {}),
    'dense_coba': ('UniRainDense', 'CoBaLoss', {}),
    'unirain_softdec_coba': ('UniRain', 'CoBaLoss', {'latent_mode': 'soft', 'decoder_mode': 'soft',
                                                      'refinement_mode': 'soft'}),
}
# how reports and the README name them
LABELS = {'unirain_coba': 'UniRain+CoBa', 'unirain_uniform': 'UniRain+uniform', 'unirain_tur': 'UniRain+TUR',
          'dense_coba': 'UniRainDense+CoBa', 'unirain_softdec_coba': 'UniRain-softdec+CoBa'}
# the ablation of the paper's claims; unirain_tur (the other reweighting strategy) runs when asked for
DEFAULT_CONFIGS = ('unirain_coba', 'unirain_uniform', 'dense_coba', 'unirain_softdec_coba')
# Rain100L training pairs 1..200: DRS train / val / test; Kodak24: images per split for the synthetic types.
DRS_SPLIT = {'train': range(1, 171), 'val': range(171, 181), 'test': range(181, 201)}
KODAK_VAL, KODAK_TEST = 2, 4


def prepare_data(shared, out, variants, seed):
    """Manifests train/val/test.jsonl under out/data (absolute paths; nothing copied from shared/)."""
    data = osp.join(out, 'data')
    if all(osp.isfile(osp.join(data, f'{split}.jsonl')) for split in DRS_SPLIT):
        return data
    synth = osp.join(data, 'kodak24_synthetic')
    subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'synthesize_rain.py'), '--input',
                    osp.join(shared, 'kodak24'), '--out', synth, '--types', 'DRD,NRS,NRD', '--val', str(KODAK_VAL),
                    '--test', str(KODAK_TEST), '--variants', str(variants), '--seed', str(seed)], check=True)
    rain100l = osp.join(shared, 'rain100l_train')
    for split, numbers in DRS_SPLIT.items():
        entries = [ManifestEntry(lq=osp.join(rain100l, 'rainy', f'{n}.png'), gt=osp.join(rain100l, 'clean', f'{n}.png'),
                                 type='DRS', source='Rain100L-train', split=split) for n in numbers]
        synth_manifest = osp.join(synth, f'{split}.jsonl')
        for entry in read_manifest(synth_manifest):
            entry.lq, entry.gt = resolve_path(synth_manifest, entry.lq), resolve_path(synth_manifest, entry.gt)
            entries.append(entry)
        entries.sort(key=lambda e: (RAIN_TYPES.index(e.type), natural_key(e.lq)))
        write_manifest(osp.join(data, f'{split}.jsonl'), entries)
    return data


def option_file(name, arch, strategy, overrides, args, data):
    val_sets = {
        f'val_{i + 1}': {'name': rain_type, 'type': 'DistilledRainDataset', 'manifest': osp.join(data, 'val.jsonl'),
                         'types': [rain_type.lower()], 'io_backend': {'type': 'disk'}}
        for i, rain_type in enumerate(RAIN_TYPES)}
    pixel_opt = {'type': strategy}
    if strategy == 'CoBaLoss':
        pixel_opt.update(warmup_updates=args.coba_warmup, window=args.coba_window)
    return {
        'name': f'ablation_{name}',
        'model_type': 'UniRainModel',
        'scale': 1,
        'num_gpu': args.num_gpu,
        'manual_seed': args.seed,
        'datasets': {
            'train': {'name': 'four_type_train', 'type': 'DistilledRainDataset',
                      'manifest': osp.join(data, 'train.jsonl'), 'io_backend': {'type': 'disk'},
                      'gt_size': args.crop, 'use_hflip': True, 'use_rot': True,
                      'num_worker_per_gpu': args.workers, 'batch_size_per_gpu': args.batch,
                      'dataset_enlarge_ratio': 50, 'prefetch_mode': None},
            **val_sets,
        },
        'network_g': {'type': arch, 'preset': args.preset, **overrides},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0,
            'optim_g': {'type': 'AdamW', 'lr': args.lr, 'weight_decay': 1e-4, 'betas': [0.9, 0.999]},
            'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [args.iters], 'restart_weights': [1],
                          'eta_min': 1e-6},
            'total_iter': args.iters,
            'warmup_iter': -1,
            'pixel_opt': pixel_opt,
        },
        'val': {'val_freq': args.val_freq, 'coba_freq': args.coba_freq, 'save_img': False, 'coba_crop': 128,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
        'logger': {'print_freq': args.coba_freq * 2, 'save_checkpoint_freq': args.val_freq,
                   'use_tb_logger': True, 'wandb': {'project': None, 'resume_id': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


def checkpoint(name, out):
    """The final weights ``basicsr train`` writes for configuration ``name``."""
    return osp.join(out, 'experiments', f'ablation_{name}', 'models', 'net_g_latest.pth')


def train(name, opt, out, threads=None):
    path = osp.join(out, 'options', f'{name}.yml')
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    if osp.isfile(checkpoint(name, out)):
        print(f'[{name}] already trained: {checkpoint(name, out)}')
        return path, 0.0
    start = time.time()
    env = dict(os.environ, **({'OMP_NUM_THREADS': str(threads)} if threads else {}))
    subprocess.run([osp.join(osp.dirname(sys.executable), 'basicsr'), 'train', '-opt', path, '--auto_resume'],
                   cwd=out, check=True, env=env)
    return path, time.time() - start


def evaluate(names, options, out, data, device, baselines=(), readme=None):
    """compare.py on the test split: the trained configurations, then ``baselines`` (NAME=SPEC, compare.py's grammar)."""
    report_dir = osp.join(out, 'report')
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'compare.py'), '--data', osp.join(data, 'test.jsonl'),
           '--out', report_dir, '--device', device]
    for name in names:
        cmd += ['--model', f'{LABELS[name]}={checkpoint(name, out)}:{options[name]}']
    for baseline in baselines:
        cmd += ['--model', baseline]
    if readme:
        cmd += ['--readme', readme]
    subprocess.run(cmd, check=True)  # from the caller's folder, where relative baseline and README paths point
    with open(osp.join(report_dir, 'results.json')) as f:
        return json.load(f)


def summary_table(results, metric='psnr_rgb'):
    """Per model: per-type mean, the average over types (each type weighs the same) and the worst type."""
    table = []
    for model in results['models']:
        per_type = {t: model['per_type'][t][metric] for t in RAIN_TYPES if t in model['per_type']}
        worst = min(per_type, key=per_type.get)
        table.append({'model': model['name'], 'per_type': per_type,
                      'average': sum(per_type.values()) / len(per_type), 'worst_type': worst,
                      'worst': per_type[worst]})
    return table


def summary_markdown(table):
    lines = ['| model | ' + ' | '.join(RAIN_TYPES) + ' | average | worst type |',
             '|---|' + '---|' * (len(RAIN_TYPES) + 2)]
    for row in table:
        cells = [f'{row["per_type"][t]:.2f}' if t in row['per_type'] else '-' for t in RAIN_TYPES]
        lines.append(f'| {row["model"]} | ' + ' | '.join(cells) +
                     f' | {row["average"]:.2f} | {row["worst"]:.2f} ({row["worst_type"]}) |')
    return 'PSNR-RGB (dB) on the held-out test images of each type:\n\n' + '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-root', '--shared', dest='shared', required=True,
                        help='folder with rain100l_train/{rainy,clean}/ and kodak24/ (e.g. datasets/)')
    parser.add_argument('--out', required=True, help='output folder (data, options, experiments, results)')
    parser.add_argument('--configs', default=','.join(DEFAULT_CONFIGS),
                        help=f'comma-separated subset of {list(CONFIGS)} (default: all but unirain_tur)')
    parser.add_argument('--preset', default='tiny', help='UniRain / UniRainDense preset (small or paper on a GPU)')
    parser.add_argument('--iters', type=int, default=3000, help='training iterations per configuration')
    parser.add_argument('--batch', type=int, default=8, help='batch size')
    parser.add_argument('--crop', type=int, default=64, help='training crop size')
    parser.add_argument('--lr', type=float, default=1e-3, help='AdamW learning rate (cosine decay to 1e-6)')
    parser.add_argument('--val-freq', type=int, default=1000, help='full per-type validation (and checkpoint) interval')
    parser.add_argument('--coba-freq', type=int, default=50, help='CoBa update interval (validation L1 on centre crops)')
    parser.add_argument('--coba-warmup', type=int, default=10, help='CoBa updates with uniform weights')
    parser.add_argument('--coba-window', type=int, default=5, help='CoBa slope window (validations)')
    parser.add_argument('--variants', type=int, default=3, help='synthetic rainy versions per Kodak image and type')
    parser.add_argument('--workers', type=int, default=1, help='data loader workers')
    parser.add_argument('--num-gpu', type=int, default=0, help='0 for CPU, 1 for one GPU')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads per training run (OMP_NUM_THREADS)')
    parser.add_argument('--seed', type=int, default=0, help='seed of initialisation, crops and router noise')
    parser.add_argument('--baseline', action='append', default=[], metavar='NAME=SPEC',
                        help='a model scored beside the configurations on the same test split, in compare.py\'s '
                             'NAME=SPEC form, e.g. PReNet-Rain100L=experiments/pretrained_models/PReNet/Rain100L.pth:PReNet '
                             '(repeat)')
    parser.add_argument('--readme', default=None,
                        help='also write the results block of this README (compare.py --readme)')
    parser.add_argument('--data-seed', type=int, default=0,
                        help='seed of the synthetic DRD/NRS/NRD rain; keep it fixed across --seed runs so that '
                             'they train and test on the same set (an existing OUT/data is reused as it is)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = osp.abspath(args.out)
    names = [n.strip() for n in args.configs.split(',') if n.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise SystemExit(f'unknown configuration(s) {unknown}; choose from {list(CONFIGS)}')
    data = prepare_data(osp.abspath(args.shared), out, args.variants, args.data_seed)
    options, seconds = {}, {}
    for name in names:
        arch, strategy, overrides = CONFIGS[name]
        options[name], seconds[name] = train(name, option_file(name, arch, strategy, overrides, args, data), out,
                                               args.threads)
    results = evaluate(names, options, out, data, 'cuda' if args.num_gpu else 'cpu', args.baseline, args.readme)
    table = summary_table(results)
    summary = {'budget': vars(args), 'train_seconds': seconds, 'table': table, 'results': results}
    with open(osp.join(out, 'ablation.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    text = summary_markdown(table)
    with open(osp.join(out, 'ablation.md'), 'w') as f:
        f.write(text)
    print(text)
    print('train seconds (0: trained by an earlier run):', {k: round(v) for k, v in seconds.items()})


if __name__ == '__main__':
    main()
