"""jimte.search: chunked exact top-K against brute-force numpy, the sharded search against the
single-device one (8 simulated devices, in a subprocess), and refusal of another model's index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jimte import search


def unit_rows(rng, n, d):
  x = rng.standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_top_k(queries, stored, k):
  scores = queries @ stored.T
  order = np.lexsort((np.broadcast_to(np.arange(len(stored)), scores.shape), -scores), axis=1)
  order = order[:, :k]
  return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_chunked_search_equals_brute_force(chunk_size):
  rng = np.random.default_rng(0)
  stored, queries = unit_rows(rng, 301, 16), unit_rows(rng, 5, 16)
  scores, ids = search.search(queries, stored, 10, chunk_size=chunk_size)
  want_scores, want_ids = numpy_top_k(queries, stored, 10)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)


def test_k_larger_than_chunk_and_bad_k():
  rng = np.random.default_rng(1)
  stored, queries = unit_rows(rng, 50, 8), unit_rows(rng, 3, 8)
  _, ids = search.search(queries, stored, 20, chunk_size=8)
  np.testing.assert_array_equal(ids, numpy_top_k(queries, stored, 20)[1])
  with pytest.raises(ValueError, match="k=51"):
    search.search(queries, stored, 51)


def test_mismatched_index_refused_by_name():
  index = search.IndexIdentity("jimte-a", "0123456789abcdef", 128)
  with pytest.raises(search.IndexMismatchError, match="'exports/a'.*512-dim"):
    search.check_compatible(
      index, search.IndexIdentity("jimte-b", "0123456789abcdef", 512), index_name="exports/a"
    )
  with pytest.raises(search.IndexMismatchError, match="'exports/a'.*ffff"):
    search.check_compatible(
      index, search.IndexIdentity("jimte-b", "ffffffffffffffff", 128), index_name="exports/a"
    )
  search.check_compatible(index, index, index_name="exports/a")


SHARDED_SCRIPT = textwrap.dedent(
  """
  import os
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = flags + " --xla_force_host_platform_device_count=8"
  import json
  import jax
  import numpy as np
  from jimte import search
  rng = np.random.default_rng(3)
  out = {}
  for n in (203, 8, 1000):
    stored = rng.standard_normal((n, 12)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    queries = stored[:4] + 0.1 * rng.standard_normal((4, 12)).astype(np.float32)
    k = min(9, n)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    s1, i1 = search.search(queries, stored, k, chunk_size=64)
    s8, i8 = search.sharded_search(queries, stored, k, mesh, "data")
    out[n] = dict(devices=len(jax.devices()), same_ids=bool((i1 == i8).all()),
                  max_diff=float(np.abs(s1 - s8).max()))
  print(json.dumps(out))
  """
)


def test_sharded_search_equals_single_device():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, env=env, check=False
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  for n, r in result.items():
    assert r["devices"] == 8, n
    assert r["same_ids"], (n, r)
    assert r["max_diff"] < 1e-5, (n, r)
