"""Three-level retrieval of real references S(q) for a candidate q (docs/method.md section 4, step 2).

1. semantic: the K1 references whose caption's text embedding is nearest to q's in L2 distance, over the
   whole database (faiss text index). References with identical captions share one embedding, hence one
   distance; ties are ordered by image cosine to q, then by reference id.
2. visual: among those, the K2 of highest image cosine similarity (ties: lower reference id first).
3. structural: among those, the K3 of highest SSIM between grayscale thumbnails (ties: lower id first).
With ``k1: null`` the semantic level is skipped and the visual level searches the whole database (faiss
image index). Every K is capped at the database size. faiss proposes the nearest captions; distances and
similarities are then recomputed exactly (float64) from the stored embeddings, so with a flat index the
result is exactly the brute-force one.
"""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from unirain_data.distillation import faiss_index
from unirain_data.distillation.ssim import ssim_to_references

# Neighbours fetched from faiss beyond the K needed, so that rounding in faiss's float32 scores cannot drop
# one that the exact float64 ranking puts inside the K.
EXTRA = 8


@dataclass
class Retrieved:
    semantic_ids: np.ndarray  # (K1,) reference ids, nearest caption first (empty when k1 is null)
    text_l2: np.ndarray  # (K1,) L2 distance between caption text embeddings
    visual_ids: np.ndarray  # (K2,)
    cosine: np.ndarray  # (K2,) image cosine similarity
    structural_ids: np.ndarray  # (K3,) the references S(q), most similar first
    ssim: np.ndarray  # (K3,)


def _order(*keys):
    """Indices sorting by the keys, the first key most significant (np.lexsort takes them reversed)."""
    return np.lexsort(tuple(reversed(keys)))


class Retriever:
    def __init__(self, db, k1, k2, k3, device=torch.device('cpu'), workers=1):
        self.db, self.device, self.workers = db, device, workers
        self.k1 = None if k1 is None else min(k1, len(db))
        self.k2 = min(k2, len(db) if self.k1 is None else self.k1)
        self.k3 = min(k3, self.k2)

    def semantic(self, text_q, image_q):
        """Level 1 for a batch: list of (ids, text_l2, cosine) per query, in level-1 order."""
        db = self.db
        _, caption_ids = faiss_index.search(db.text_index, text_q, min(len(db.captions), self.k1 + EXTRA))
        out = []
        for q in range(len(text_q)):
            found = caption_ids[q][caption_ids[q] >= 0]
            dist = np.sqrt(((db.text_emb[found].astype(np.float64) - text_q[q].astype(np.float64)) ** 2).sum(1))
            ids, l2, cos = [], [], []
            for c in _order(dist, found):
                members = db.group(found[c])
                need = self.k1 - len(ids)
                sims = np.asarray(db.image_emb[members], np.float64) @ image_q[q].astype(np.float64)
                keep = _order(-sims, members)[:need]
                ids += members[keep].tolist()
                cos += sims[keep].tolist()
                l2 += [dist[c]] * len(keep)
                if len(ids) >= self.k1:
                    break
            out.append((np.array(ids, np.int64), np.array(l2), np.array(cos)))
        return out

    def visual_all(self, image_q):
        """Level 2 over the whole database (k1 null): list of (ids, cosine) per query."""
        db = self.db
        k = min(len(db), self.k2 + EXTRA)
        _, found = faiss_index.search(db.image_index, image_q, k)
        out = []
        for q in range(len(image_q)):
            ids = found[q][found[q] >= 0]
            sims = np.asarray(db.image_emb[ids], np.float64) @ image_q[q].astype(np.float64)
            keep = _order(-sims, ids)[:self.k2]
            out.append((ids[keep], sims[keep]))
        return out

    def structural(self, thumbs_q, candidate_ids):
        """Level 3 for a batch: list of (ids, ssim) per query, from each query's level-2 ids."""
        def one(q):
            ids = candidate_ids[q]
            scores = ssim_to_references(thumbs_q[q], np.asarray(self.db.thumbs[ids]), self.device)
            keep = _order(-scores, ids)[:self.k3]
            return ids[keep], scores[keep]

        if self.workers <= 1 or len(candidate_ids) <= 1 or self.device.type == 'cuda':
            return [one(q) for q in range(len(candidate_ids))]
        with ThreadPoolExecutor(self.workers) as pool:  # OpenCV releases the GIL
            return list(pool.map(one, range(len(candidate_ids))))

    def __call__(self, text_q, image_q, thumbs_q):
        """Retrieved per query. text_q, image_q: (Q, D) unit vectors; thumbs_q: (Q, S, S) uint8."""
        if self.k1 is None:
            semantic = [(np.zeros(0, np.int64), np.zeros(0), None)] * len(image_q)
            visual = self.visual_all(image_q)
        else:
            semantic = self.semantic(text_q, image_q)
            visual = []
            for ids, _, cos in semantic:
                keep = _order(-cos, ids)[:self.k2]
                visual.append((ids[keep], cos[keep]))
        structural = self.structural(thumbs_q, [ids for ids, _ in visual]) if self.k3 else \
            [(np.zeros(0, np.int64), np.zeros(0))] * len(image_q)
        return [Retrieved(s[0], s[1], v[0], v[1], st[0], st[1]) for s, v, st in zip(semantic, visual, structural)]
