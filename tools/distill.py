"""RAG-based dataset distillation (docs/method.md section 4): keep the candidate pairs whose rain looks real.

    python tools/distill.py build-refs -opt options/distill_UniRain.yml          # reference database
    python tools/distill.py score -opt options/distill_UniRain.yml               # score, merge, report
    python tools/distill.py run -opt options/distill_UniRain.yml                 # build-refs if needed + score
    torchrun --nproc_per_node=4 tools/distill.py score -opt options/distill_UniRain.yml   # 4 shards / GPUs
    python tools/distill.py score -opt F --shard 1/4                             # one shard by hand
    python tools/distill.py merge -opt F [--include-references]                  # join finished shards
    python tools/distill.py report -opt F                                        # summary + picture again

A stopped or killed build-refs or score run continues where it stopped when the same command is run again.
Exit status: 0 done (or stopped by --max-chunks), 2 a usage, configuration, data or missing-weights error.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from unirain_data.distillation import pipeline  # noqa: E402
from unirain_data.distillation.config import ConfigError, load_config, require  # noqa: E402
from unirain_data.distillation.prompt import PromptError  # noqa: E402
from unirain_data.distillation.reference_db import ReferenceDBError  # noqa: E402
from unirain_data.distillation.weights import MissingWeightsError  # noqa: E402
from unirain_utils.image_io import BadImageError  # noqa: E402
from unirain_data.manifest import ManifestError  # noqa: E402
from unirain_utils.run_lock import RunLockedError  # noqa: E402

USER_ERRORS = (ConfigError, PromptError, ReferenceDBError, MissingWeightsError, pipeline.WorkDirError, BadImageError,
               ManifestError, FileNotFoundError, FileExistsError, ImportError, RunLockedError)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='RAG-based dataset distillation: real references, three-level retrieval, VLM voting.',
        epilog='Exit status: 0 done, 2 usage / configuration / data / missing-weights error.')
    sub = parser.add_subparsers(dest='command', required=True)

    def command(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument('-opt', '--opt', required=True,
                       help='distillation config (YAML), e.g. options/distill_UniRain.yml')
        p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                       help='override a config key, e.g. --set retrieval.k1=50 (repeatable; VALUE is YAML)')
        p.add_argument('--no-progress', action='store_true', help='no progress bars')
        return p

    build = command('build-refs', 'caption, embed and index the real reference photos')
    build.add_argument('--overwrite', action='store_true', help='replace an existing reference database')
    for name, text in (('score', 'score the candidates (this shard), then merge and report when complete'),
                       ('run', 'build-refs when the database is missing, then score, merge and report')):
        p = command(name, text)
        p.add_argument('--shard', help='RANK/WORLD: score only this shard (default: RANK/WORLD_SIZE from torchrun, '
                                       'else 0/1)')
        p.add_argument('--max-chunks', type=int, help='stop after this many chunks (to split a long run into '
                                                      'sessions; the same command continues)')
        p.add_argument('--no-merge', action='store_true', help='only score; merge later with the merge command')
        p.add_argument('--include-references', action='store_true', default=None,
                       help='put the real reference pairs into the manifest as verdict real')
    merge = command('merge', 'join the finished shards into the distilled manifest, then report')
    merge.add_argument('--world', type=int, help='the number of shards scored (default: the finished set found)')
    merge.add_argument('--output', help='manifest to write (default: output.manifest)')
    merge.add_argument('--include-references', action='store_true', default=None,
                       help='put the real reference pairs into the manifest as verdict real')
    report = command('report', 'summary (kept / rejected per type and source) and a picture of examples')
    report.add_argument('--manifest', help='distilled manifest (default: output.manifest)')
    report.add_argument('--report-dir', help='where summary.json/.txt and examples.png go (default: output.report_dir)')
    return parser.parse_args(argv)


def report_dir_of(cfg, manifest):
    return cfg['output']['report_dir'] or os.path.splitext(manifest)[0] + '_report'


def do_build(cfg, overwrite, progress):
    from unirain_data.distillation.captioner import Captioner
    from unirain_data.distillation.embedder import Embedder
    from unirain_data.distillation.reference_db import (build_reference_db, list_reference_entries,
                                                        list_reference_images)
    from unirain_data.distillation.weights import resolve_device
    db_dir = require(cfg, 'references.db_dir', 'where to save the reference database')
    refs = cfg['references']
    if refs['manifest']:
        records = list_reference_entries(refs['manifest'])
    else:
        records = list_reference_images(require(cfg, 'references.root', 'a folder of real rainy photos (or set '
                                                                        'references.manifest)'))
    if os.path.exists(db_dir) and not overwrite:
        raise FileExistsError(f'reference database {db_dir} exists; pass --overwrite to rebuild it')
    device = resolve_device(cfg['device'])
    print(f'{len(records)} reference images; loading the captioner and open_clip on {device}')
    captioner = Captioner(device=device, offline=cfg['offline'], **cfg['captioner'])
    embedder = Embedder(device=device, offline=cfg['offline'], **cfg['embedder'])
    db = build_reference_db(records, db_dir, captioner, embedder, cfg, overwrite=overwrite,
                            workers=cfg['pipeline']['io_workers'], progress=progress, log=print)
    print(f'reference database {db_dir}: {len(db)} references, {len(db.captions)} distinct captions, '
          f'indexes text={db.meta["index"]["text"]} image={db.meta["index"]["image"]}')


def do_merge(cfg, output=None, world=None, include_references=None, progress=True):
    from unirain_data.distillation.report import format_summary, write_report
    path, count = pipeline.merge(cfg, output=output, world=world, include_references=include_references,
                                 progress=progress)
    print(f'distilled manifest {path}: {count} entries')
    work_dir = cfg['pipeline']['work_dir']
    summary = write_report(path, report_dir_of(cfg, path), cfg['output']['report_examples'],
                           pipeline.stage_throughput(work_dir, pipeline.finished_world(work_dir, world)))
    print(format_summary(summary))
    print(f'report: {report_dir_of(cfg, path)}')


def do_score(cfg, args, progress):
    if args.shard:
        rank, world = pipeline.parse_shard(args.shard)
        launched = False
    else:
        rank, world = pipeline.shard_from_env()
        launched = world > 1
    result = pipeline.score(cfg, (rank, world), max_chunks=args.max_chunks, progress=progress and rank == 0)
    print(f'shard {rank}/{world}: {result.status}; {result.scored} candidates scored now, {result.skipped} were '
          f'already done, {result.candidates} in this shard')
    if result.status != 'done' or args.no_merge or rank != 0:
        return
    if world > 1 and not launched:
        print(f'merge when every shard is done: python tools/distill.py merge -opt {args.opt} --world {world}')
        return
    if world > 1:
        pipeline.wait_for_shards(cfg['pipeline']['work_dir'], world)
    do_merge(cfg, world=world, include_references=args.include_references, progress=progress)


def main(argv=None):
    args = parse_args(argv)
    progress = not args.no_progress
    try:
        cfg = load_config(args.opt, args.set)
        if args.command == 'build-refs':
            do_build(cfg, args.overwrite, progress)
        elif args.command == 'run':
            if not os.path.isdir(require(cfg, 'references.db_dir', 'the reference database folder')):
                if pipeline.shard_from_env()[1] > 1 or args.shard:
                    raise ConfigError('with several shards, build the reference database first: '
                                      f'python tools/distill.py build-refs -opt {args.opt}')
                do_build(cfg, False, progress)
            do_score(cfg, args, progress)
        elif args.command == 'score':
            do_score(cfg, args, progress)
        elif args.command == 'merge':
            do_merge(cfg, args.output, args.world, args.include_references, progress)
        elif args.command == 'report':
            from unirain_data.distillation.report import format_summary, write_report
            manifest = args.manifest or require(cfg, 'output.manifest', 'the distilled manifest to report on')
            folder = args.report_dir or report_dir_of(cfg, manifest)
            summary = write_report(manifest, folder, cfg['output']['report_examples'])
            print(format_summary(summary))
            print(f'report: {folder}')
    except USER_ERRORS as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
