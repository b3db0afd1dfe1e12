"""The reference database: REAL rainy photos with their captions, CLIP embeddings, SSIM thumbnails and indexes.

Built from a folder of photos (searched recursively) or a manifest of real pairs (its rainy images; the clean
ones ride along so that ``--include-references`` can put the real pairs into the distilled manifest). Saved
as a folder and reloaded without recomputing anything:

    meta.json         format, counts, the models and sizes it was built with, index types
    references.jsonl  one line per reference: path, gt, type, source, caption id (reference id = line number)
    captions.json     the distinct captions (identical captions share one text embedding)
    text_emb.npy      (C, D) float32 unit text embeddings of the distinct captions
    image_emb.npy     (N, D) float32 unit image embeddings
    thumbs.npy        (N, S, S) uint8 grayscale SSIM thumbnails
    text.index        faiss index over text_emb (L2)
    image.index       faiss index over image_emb (inner product = cosine)

The folder is built in ``.<name>.building`` beside it and renamed when complete: never half-written. A build
that is stopped or killed keeps its progress there (captions, image embeddings and thumbnails of every finished
batch) and the next build of the same database continues from it, as long as the references and the models are
the same; otherwise the partial build is discarded and the build starts afresh. One build per database at a
time (``unirain_utils.run_lock`` on the database folder).
"""
import datetime
import hashlib
import json
import os
import shutil

import numpy as np

from unirain_data.distillation import faiss_index
from unirain_data.distillation.images import load_images
from unirain_data.distillation.progress import StageBars
from unirain_data.manifest import ManifestError, iter_manifest, natural_key, resolve_path
from unirain_utils import run_lock
from unirain_utils.files import atomic_write
from unirain_utils.image_io import IMAGE_EXTENSIONS, is_image_file

FORMAT = 1
FILES = ('meta.json', 'references.jsonl', 'captions.json', 'text_emb.npy', 'image_emb.npy', 'thumbs.npy',
         'text.index', 'image.index')
# the bookkeeping of a build in progress, removed once the database is complete
_PLAN, _DONE, _CAPTIONS = 'build_plan.json', 'build_done.json', 'build_captions.jsonl'


class ReferenceDBError(ValueError):
    """A reference database that is missing, incomplete, or built with other models than the config names."""


def list_reference_images(root):
    """Image files under ``root`` (recursively), in natural order, as reference records."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'references.root: folder not found: {root}')
    found = []
    for folder, dirs, names in os.walk(root):
        dirs.sort(key=natural_key)
        found += [os.path.join(folder, n) for n in sorted(names, key=natural_key)
                  if is_image_file(n)]
    if not found:
        raise FileNotFoundError(f'references.root: no images ({", ".join(IMAGE_EXTENSIONS)}) under {root}')
    return [{'path': os.path.abspath(p), 'gt': None, 'type': None, 'source': os.path.basename(os.path.abspath(root))}
            for p in found]


def list_reference_entries(manifest):
    """The rainy images of a manifest of real pairs as reference records (paths made absolute)."""
    records = [{'path': os.path.abspath(resolve_path(manifest, e.lq)),
                'gt': os.path.abspath(resolve_path(manifest, e.gt)), 'type': e.type, 'source': e.source}
               for e in iter_manifest(manifest)]
    if not records:
        raise ManifestError(f'references.manifest: {manifest} has no entries')
    return records


def model_signature(cfg):
    """What the database's captions, embeddings and thumbnails depend on; scoring must use the same."""
    return {
        'captioner': {k: cfg['captioner'][k] for k in ('model', 'prompt', 'max_new_tokens')},
        'embedder': {k: cfg['embedder'][k] for k in ('model', 'pretrained')},
        'ssim_size': cfg['retrieval']['ssim_size'],
        'max_side': cfg['pipeline']['max_side'],
    }


def _group_members(caption_of, num_captions):
    """CSR arrays: the references of caption c are members[offsets[c]:offsets[c + 1]], in id order."""
    members = np.argsort(caption_of, kind='stable').astype(np.int64)
    offsets = np.zeros(num_captions + 1, np.int64)
    np.cumsum(np.bincount(caption_of, minlength=num_captions), out=offsets[1:])
    return members, offsets


def work_dir_of(db_dir):
    """Where the database is built (and a stopped build waits to be continued): hidden, beside it."""
    parent, name = os.path.split(os.path.abspath(db_dir))
    return os.path.join(parent, f'.{name}.building')


def build_reference_db(records, db_dir, captioner, embedder, cfg, overwrite=False, workers=4, progress=True,
                       log=None):
    """Caption, embed and index ``records``; save to ``db_dir``. Returns the loaded ReferenceDB.

    A build stopped earlier with the same records and models continues where it stopped; ``log`` (e.g. print)
    is told so.
    """
    if os.path.exists(db_dir) and not overwrite:
        raise FileExistsError(f'reference database {db_dir} exists; pass --overwrite to rebuild it')
    run_lock.acquire(db_dir)
    try:
        work = work_dir_of(db_dir)
        _build_into(work, records, captioner, embedder, cfg, workers, progress, log or (lambda message: None))
        old = work[:-len('.building')] + '.old'
        shutil.rmtree(old, ignore_errors=True)  # left by a build killed between the two renames below
        if os.path.exists(db_dir):
            os.replace(db_dir, old)
        os.replace(work, db_dir)
        shutil.rmtree(old, ignore_errors=True)
        for name in (_PLAN, _DONE, _CAPTIONS):
            os.remove(os.path.join(db_dir, name))
    finally:
        run_lock.release()
    return ReferenceDB.load(db_dir, cfg)


def _plan(records, embedder, cfg):
    """What a partial build must have been started with to be continued."""
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode('utf-8')).hexdigest()
    return {'format': FORMAT, 'records_sha256': digest, 'count': len(records), 'dim': embedder.dim,
            'signature': model_signature(cfg)}


def _resume_point(folder, plan, log):
    """(references done, caption bytes to keep) of a partial build in ``folder`` made with ``plan``; else (0, 0)
    after removing whatever is there."""
    try:
        with open(os.path.join(folder, _PLAN), encoding='utf-8') as f:
            same = json.load(f) == plan
        with open(os.path.join(folder, _DONE), encoding='utf-8') as f:
            done = json.load(f)
        for name in ('image_emb.npy', 'thumbs.npy', _CAPTIONS):
            if not os.path.isfile(os.path.join(folder, name)):
                raise ValueError(f'{name} is missing')
        if same:
            log(f'continuing the stopped build in {folder}: {done["done"]} of {plan["count"]} references done')
            return done['done'], done['captions_bytes']
        log(f'discarding the stopped build in {folder}: made for other references or models')
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        log(f'discarding the stopped build in {folder}: its bookkeeping is damaged ({exc})')
    shutil.rmtree(folder, ignore_errors=True)
    return 0, 0


def _build_into(folder, records, captioner, embedder, cfg, workers, progress, log):
    num, size = len(records), cfg['retrieval']['ssim_size']
    batch = cfg['references']['batch_size']
    plan = _plan(records, embedder, cfg)
    done, caption_bytes = _resume_point(folder, plan, log)
    emb_path, thumbs_path = os.path.join(folder, 'image_emb.npy'), os.path.join(folder, 'thumbs.npy')
    if not os.path.isdir(folder):
        os.makedirs(folder)
        np.lib.format.open_memmap(emb_path, 'w+', np.float32, (num, embedder.dim)).flush()
        np.lib.format.open_memmap(thumbs_path, 'w+', np.uint8, (num, size, size)).flush()
        atomic_write(os.path.join(folder, _PLAN), json.dumps(plan))
    image_emb, thumbs = np.load(emb_path, mmap_mode='r+'), np.load(thumbs_path, mmap_mode='r+')
    caption_ids, captions, caption_of = {}, [], np.zeros(num, np.int64)

    def add_captions(start, texts):
        for offset, text in enumerate(texts):
            caption_of[start + offset] = caption_ids.setdefault(text, len(captions))
            if caption_of[start + offset] == len(captions):
                captions.append(text)

    with open(os.path.join(folder, _CAPTIONS), 'a+b') as caption_file:
        caption_file.truncate(caption_bytes)  # lines written after the last completed batch are redone
        caption_file.seek(0)
        add_captions(0, [json.loads(line) for line in caption_file.read().splitlines()])
        bars = StageBars(['load', 'caption', 'embed image'], num, 'ref', enabled=progress, initial=done)
        for start in range(done, num, batch):
            paths = [r['path'] for r in records[start:start + batch]]
            with bars.stage('load', len(paths)):
                images = load_images(paths, cfg['pipeline']['max_side'], size, workers)
            with bars.stage('caption', len(paths)):
                texts = captioner([im.rgb for im in images])
            with bars.stage('embed image', len(paths)):
                image_emb[start:start + len(paths)] = embedder.images([im.rgb for im in images])
            thumbs[start:start + len(paths)] = np.stack([im.thumb for im in images])
            add_captions(start, texts)
            caption_file.write(''.join(json.dumps(t, ensure_ascii=False) + '\n' for t in texts).encode('utf-8'))
            caption_file.flush()
            os.fsync(caption_file.fileno())
            image_emb.flush()
            thumbs.flush()
            # the batch counts as done only once its captions, embeddings and thumbnails are on disk
            atomic_write(os.path.join(folder, _DONE), json.dumps({'done': start + len(paths),
                                                                  'captions_bytes': caption_file.tell()}))
        bars.close()
    text_emb = embedder.texts(captions)
    np.save(os.path.join(folder, 'text_emb.npy'), text_emb)
    index_cfg = cfg['index']
    text_index = faiss_index.build_index(text_emb, 'l2', index_cfg)
    image_index = faiss_index.build_index(np.asarray(image_emb), 'ip', index_cfg)
    faiss_index.save_index(text_index, os.path.join(folder, 'text.index'))
    faiss_index.save_index(image_index, os.path.join(folder, 'image.index'))
    with open(os.path.join(folder, 'references.jsonl'), 'w', encoding='utf-8') as f:
        for record, caption in zip(records, caption_of):
            f.write(json.dumps({**record, 'caption': int(caption)}, ensure_ascii=False) + '\n')
    with open(os.path.join(folder, 'captions.json'), 'w', encoding='utf-8') as f:
        json.dump(captions, f, ensure_ascii=False)
    meta = {'format': FORMAT, 'count': num, 'num_captions': len(captions), 'dim': embedder.dim,
            'signature': model_signature(cfg),
            'index': {'text': faiss_index.index_kind(text_index), 'image': faiss_index.index_kind(image_index)},
            'sources': sorted({r['source'] for r in records}),
            'created': datetime.datetime.now().isoformat(timespec='seconds')}
    with open(os.path.join(folder, 'meta.json'), 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=2)


class ReferenceDB:
    """A loaded database. Embeddings and thumbnails are memory-mapped, not read into memory."""

    def __init__(self, folder, meta, records, captions, text_emb, image_emb, thumbs, text_index, image_index):
        self.folder, self.meta = folder, meta
        self.records, self.captions = records, captions
        self.caption_of = np.array([r['caption'] for r in records], np.int64)
        self.text_emb, self.image_emb, self.thumbs = text_emb, image_emb, thumbs
        self.text_index, self.image_index = text_index, image_index
        self.members, self.offsets = _group_members(self.caption_of, len(captions))

    def __len__(self):
        return len(self.records)

    def group(self, caption_id):
        """Reference ids sharing caption ``caption_id``, ascending."""
        return self.members[self.offsets[caption_id]:self.offsets[caption_id + 1]]

    @classmethod
    def load(cls, folder, cfg=None):
        """Load ``folder``; with ``cfg`` also check it was built with the config's models, and apply its
        search settings (IVF nprobe, HNSW efSearch, GPU)."""
        if not os.path.isdir(folder):
            raise ReferenceDBError(f'reference database not found: {folder} (build it with: tools/distill.py '
                                   f'build-refs -opt CONFIG)')
        missing = [name for name in FILES if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise ReferenceDBError(f'reference database {folder} is incomplete (missing {", ".join(missing)}); '
                                   'rebuild it with build-refs --overwrite')
        with open(os.path.join(folder, 'meta.json'), encoding='utf-8') as f:
            meta = json.load(f)
        if meta.get('format') != FORMAT:
            raise ReferenceDBError(f'reference database {folder} has format {meta.get("format")!r}, this code reads '
                                   f'format {FORMAT}; rebuild it with build-refs --overwrite')
        if cfg is not None:
            check_signature(folder, meta, cfg)
        with open(os.path.join(folder, 'references.jsonl'), encoding='utf-8') as f:
            records = [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(folder, 'captions.json'), encoding='utf-8') as f:
            captions = json.load(f)
        text_emb = np.load(os.path.join(folder, 'text_emb.npy'))
        image_emb = np.load(os.path.join(folder, 'image_emb.npy'), mmap_mode='r')
        thumbs = np.load(os.path.join(folder, 'thumbs.npy'), mmap_mode='r')
        if not (len(records) == len(image_emb) == len(thumbs) == meta['count'] and len(captions) == len(text_emb)):
            raise ReferenceDBError(f'reference database {folder} is inconsistent (counts differ between files); '
                                   'rebuild it with build-refs --overwrite')
        text_index = faiss_index.load_index(os.path.join(folder, 'text.index'))
        image_index = faiss_index.load_index(os.path.join(folder, 'image.index'))
        if cfg is not None:
            for index in (text_index, image_index):
                faiss_index.configure_search(index, cfg['index'])
            text_index = faiss_index.searchable(text_index, cfg['index']['use_gpu'])
            image_index = faiss_index.searchable(image_index, cfg['index']['use_gpu'])
        return cls(folder, meta, records, captions, text_emb, image_emb, thumbs, text_index, image_index)


def check_signature(folder, meta, cfg):
    """The database's captions/embeddings are comparable with the candidates' only under the same models."""
    built, wanted = meta['signature'], model_signature(cfg)
    differ = [f'{k}: built with {built.get(k)!r}, config has {wanted[k]!r}'
              for k in wanted if built.get(k) != wanted[k]]
    if differ:
        raise ReferenceDBError(f'reference database {folder} was built with other settings than the config: '
                               f'{"; ".join(differ)}. Rebuild it (build-refs --overwrite) or use another db_dir.')
