"""RAG-based dataset distillation (docs/method.md section 4): keep the candidate pairs whose rain looks real.

Stages, one module each: ``captioner`` (BLIP or any transformers image-to-text model), ``embedder``
(open_clip text and image features), ``reference_db`` (the real references, their faiss indexes, saved and
reloaded), ``retrieval`` (semantic top-K1, visual top-K2, structural top-K3), ``judges`` (vision-language
models answering a yes/no ``prompt``), ``vote`` (majority with a threshold), ``pipeline`` (streaming,
sharding, resume, the distilled manifest) and ``report`` (summary and picture). ``tools/distill.py`` is the
command line. This package imports open_clip, transformers and faiss, so ``unirain_data`` never imports it.
"""
