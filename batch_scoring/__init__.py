"""Batch scoring of an archive of spectrograms on Ray Data: `orca score MODEL SOURCE --out DEST`.

/predict scores one active-learning pool on one machine; this scores months of clips on as many
machines as a Ray cluster has, with the same scorers (`scoring.scorers`: ONNX Runtime on CPUs,
torch on GPUs), the same decoding (`scoring.images` / `scoring.torch_decode`), the same order
and the same clip fields (`service.predict`, `service.nodes`) as /predict, so the values agree.

- `batch_scoring.parts`: what lies under DEST (the plan, the Parquet parts, their schema) and how a
  re-run finds the parts already written;
- `batch_scoring.workers`: the Ray Data stages (read + decode on CPU workers, score on ONNX Runtime
  CPU actors or torch GPU actors);
- `batch_scoring.run`: `score_archive(...)`, which plans, starts or joins Ray, runs the stages and
  writes each part once.

Ray and pyarrow are the `scale` extra (`pip install '.[scale]'`): nothing here is
imported by the service, and this package imports them only inside the functions that need them.
See docs/scoring.md.
"""
