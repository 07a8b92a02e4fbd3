"""Exact retrieval latency / throughput: jimte.search.DeviceIndex beside faiss IndexFlatIP, and the
recall@10 that faiss IndexIVFFlat (the approximate route for beyond-memory sizes) costs.

Random unit vectors, D=512 (the paper's) and D=128 (the default config's), N = 100k and 1M stored,
query batches of 1 and 64. Batch-1 search reads every stored byte once per query, so beside each
store the bandwidth floor is printed: one jitted matrix-vector product over the whole float32 store
(no top-K), its ms and GB/s. Prints one JSON line per measurement.

    python benchmarks/bench_retrieve.py [--sizes 100000,1000000] [--dims 512,128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np


def unit(rng, n, d):
  x = rng.standard_normal((n, d), dtype=np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x


def best_time(fn, repeats):
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  import faiss
  import jax
  import jax.numpy as jnp

  from jimte import search

  # The bandwidth floor: one pass over the stored rows (product with one query, then a max), the
  # bytes a batch-1 search must read, without its top-K.
  matvec = jax.jit(lambda q, r: jnp.max(q @ r.T))

  p = argparse.ArgumentParser()
  p.add_argument("--sizes", default="100000,1000000")
  p.add_argument("--dims", default="512,128")
  p.add_argument("--batches", default="1,64")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--ivf_size", type=int, default=100000)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  for d in map(int, args.dims.split(",")):
    for n in map(int, args.sizes.split(",")):
      stored = unit(rng, n, d)
      index = search.DeviceIndex(stored)
      flat = faiss.IndexFlatIP(d)
      flat.add(stored)
      probe, rows = jax.device_put(unit(rng, 1, d)), jax.device_put(stored)
      t_floor = best_time(lambda q=probe, r=rows: matvec(q, r).block_until_ready(), args.repeats)
      del probe, rows
      print(
        json.dumps(
          dict(
            what="bandwidth_floor",
            dim=d,
            stored=n,
            matvec_ms=1e3 * t_floor,
            gb_per_s=stored.nbytes / t_floor / 1e9,
          )
        ),
        flush=True,
      )
      for b in map(int, args.batches.split(",")):
        queries = unit(rng, b, d)
        t_jax = best_time(functools.partial(index.search, queries, args.k), args.repeats)
        t_faiss = best_time(functools.partial(flat.search, queries, args.k), args.repeats)
        (ours_s, ours), (theirs_s, theirs) = (
          index.search(queries, args.k),
          flat.search(queries, args.k),
        )
        same = bool((ours == theirs).all())
        # Where the lists differ, near-ties ordered differently by float sums: same sets, scores
        # equal to float32 rounding.
        overlap = np.mean(
          [len(set(a) & set(t)) / args.k for a, t in zip(ours, theirs, strict=True)]
        )
        score_diff = float(np.max(np.abs(ours_s - theirs_s)))
        print(
          json.dumps(
            dict(
              what="exact",
              dim=d,
              stored=n,
              batch=b,
              jimte_ms_per_query=1e3 * t_jax / b,
              jimte_qps=b / t_jax,
              faiss_flat_ms_per_query=1e3 * t_faiss / b,
              faiss_flat_qps=b / t_faiss,
              same_top_ids=same,
              top_id_overlap=float(overlap),
              max_score_diff=score_diff,
            )
          ),
          flush=True,
        )
    # The approximate route: IVF recall@k against exact, on ivf_size stored vectors.
    n = args.ivf_size
    stored, queries = unit(rng, n, d), unit(rng, 200, d)
    flat = faiss.IndexFlatIP(d)
    flat.add(stored)
    exact = flat.search(queries, args.k)[1]
    nlist = int(4 * np.sqrt(n))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(stored[: min(n, 40 * nlist)])
    ivf.add(stored)
    for nprobe in (1, 8, 32, 128):
      ivf.nprobe = nprobe
      t = best_time(functools.partial(ivf.search, queries, args.k), 2)
      found = ivf.search(queries, args.k)[1]
      recall = np.mean([len(set(a) & set(e)) / args.k for a, e in zip(found, exact, strict=True)])
      print(
        json.dumps(
          dict(
            what="ivf",
            dim=d,
            stored=n,
            nlist=nlist,
            nprobe=nprobe,
            recall_at_k=float(recall),
            ms_per_query=1e3 * t / len(queries),
          )
        ),
        flush=True,
      )


if __name__ == "__main__":
  main()
