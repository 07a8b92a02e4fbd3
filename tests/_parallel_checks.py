"""Multi-device checks of `jimte.losses.itm_objective` (and of `jimte.sharding`'s rules), run by
tests/test_parallel.py in a subprocess; the oracle is the dense reference tests/reference_losses.py.

jax sees one CPU device per process unless XLA_FLAGS asks for more before jax is imported, and the
other test files share pytest's process with one device; so this script sets the flag itself and
runs on 8 simulated devices. It prints one JSON object on its last line: check name -> measured
numbers (relative errors, shapes, byte counts); the assertions live in test_parallel.py.

    python tests/_parallel_checks.py [CHECK ...]   # default: every check
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import json
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from jimte import losses, sharding
from tests import reference_losses as ref

N, R, T, D = 16, 8, 6, 16
HYPER = dict(gamma1=4.0, gamma2=5.0, gamma3=10.0, sentence_margin=0.5, word_margin=0.5)


def mesh_of(*axes: tuple[str, int], axis_types: str = "auto", devices=None) -> jax.sharding.Mesh:
  return sharding.make_mesh(dict(axes=axes, axis_types=axis_types), devices=devices)


def make_inputs(seed: int = 0, batch: int = N) -> dict[str, jax.Array]:
  """Random embeddings with ragged word masks (1..T valid words) and repeated study ids."""
  rng = np.random.default_rng(seed)
  valid = rng.integers(1, T + 1, size=batch)
  return dict(
    img_emb=jnp.asarray(rng.standard_normal((batch, D)), jnp.float32),
    txt_emb=jnp.asarray(rng.standard_normal((batch, D)), jnp.float32),
    regions=jnp.asarray(rng.standard_normal((batch, R, D)), jnp.float32),
    words=jnp.asarray(rng.standard_normal((batch, T, D)), jnp.float32),
    word_mask=jnp.asarray(np.arange(T)[None, :] < valid[:, None]),
    study_ids=jnp.asarray(rng.integers(0, batch * 2 // 3, size=batch), jnp.int32),
  )


def rel(a, b) -> float:
  """max |a - b| / max |b| over a pytree pair (scale-relative, so tiny entries don't dominate)."""
  a_leaves, b_leaves = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(a_leaves) == len(b_leaves), (len(a_leaves), len(b_leaves))
  worst = 0.0
  for x, y in zip(a_leaves, b_leaves, strict=True):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape, (x.shape, y.shape)
    worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-12)))
  return worst


def scalar_rel(a: dict, b: dict) -> float:
  """max over terms of |a - b| / |b| (float64)."""
  assert sorted(a) == sorted(b), (sorted(a), sorted(b))
  return max(abs(float(a[k]) - float(b[k])) / max(abs(float(b[k])), 1e-12) for k in b)


ARGNUMS = (0, 1, 2, 3)  # img_emb, txt_emb, regions, words


def value_and_grads(fn, x: dict, neg, study):
  """(total, terms, grads w.r.t. the four float inputs) of fn(..., neg, study), jitted once."""

  def loss(img, txt, regions, words):
    return fn(img, txt, regions, words, x["word_mask"], neg, study)

  (total, terms), grads = jax.jit(jax.value_and_grad(loss, argnums=ARGNUMS, has_aux=True))(
    x["img_emb"], x["txt_emb"], x["regions"], x["words"]
  )
  return total, terms, grads


def reference(weights=losses.DEFAULT_WEIGHTS):
  """The dense reference `itm_loss` with the argument order of the objective's function."""

  def fn(img, txt, regions, words, mask, neg, study):
    return ref.itm_loss(
      img, txt, regions, words, mask, neg, study_ids=study, weights=weights, **HYPER
    )

  return fn


def compare(
  mesh,
  *,
  local_pairs="global",
  negatives="shared",
  use_study=True,
  weights=losses.DEFAULT_WEIGHTS,
  seed=0,
) -> dict:
  """Sharded vs the dense reference: relative errors of the total, the terms and input gradients."""
  x = make_inputs(seed)
  study = x["study_ids"] if use_study else None
  d = sharding.num_batch_shards(mesh)
  if negatives == "hardest":
    neg = "hardest"
  else:
    shards = d if local_pairs == "device" else 1
    neg = losses.sample_negatives(jax.random.key(seed), N, shards)
    if negatives == "pair":
      neg = (neg, losses.sample_negatives(jax.random.key(seed + 1), N, shards))
  sharded = losses.itm_objective(mesh, weights=weights, local_pairs=local_pairs, **HYPER)
  total, terms, grads = value_and_grads(sharded, x, neg, study)

  if local_pairs == "device":
    ref_fn = device_mode_reference(d, weights)
  else:
    ref_fn = reference(weights)
  ref_total, ref_terms, ref_grads = value_and_grads(ref_fn, x, neg, study)
  return dict(
    total_rel=rel(total, ref_total),
    terms_rel=scalar_rel(terms, ref_terms),
    grads_rel=rel(grads, ref_grads),
    terms=sorted(terms),
    grad_norm=float(sum(jnp.sum(g * g) for g in grads)) ** 0.5,
    finite=bool(np.isfinite(float(total))),
  )


def device_mode_reference(d: int, weights):
  """The definition of local_pairs='device' from the dense reference: its sentence terms over the
  whole batch, plus each word term as the mean over the d shards of the reference on that shard
  alone (its own pairs, study ids and shard-local negatives)."""
  weights = losses.resolve_weights(weights)
  sentence_w = {k: (v if k in losses.SENTENCE_TERMS else 0.0) for k, v in weights.items()}
  word_w = {k: (v if k in losses.WORD_TERMS else 0.0) for k, v in weights.items()}

  def fn(img, txt, regions, words, mask, neg, study):
    n = img.shape[0] // d
    _, terms = ref.itm_loss(
      img, txt, None, None, None, neg, study_ids=study, weights=sentence_w, **HYPER
    )
    shard_terms = []
    for s in range(d):
      part = slice(s * n, (s + 1) * n)
      local_neg = (
        neg
        if isinstance(neg, str)
        else jax.tree.map(lambda a, part=part, s=s: a[part] - s * n, neg)
      )
      _, t = ref.itm_loss(
        None,
        None,
        regions[part],
        words[part],
        mask[part],
        local_neg,
        study_ids=None if study is None else study[part],
        weights=word_w,
        **HYPER,
      )
      shard_terms.append(t)
    terms.update({k: sum(t[k] for t in shard_terms) / d for k in shard_terms[0]})
    terms = {k: terms[k] for k in losses.TERM_NAMES if k in terms}
    total = sum(weights[k] * v for k, v in terms.items())
    return total, terms

  return fn


# --------------------------------------------------------------------------------------------------
# The checks.
# --------------------------------------------------------------------------------------------------


def check_global_data8():
  return compare(mesh_of(("data", -1), ("fsdp", 1)))


def check_global_data4_fsdp2():
  return compare(mesh_of(("data", -1), ("fsdp", 2)), seed=12)


def check_global_pair_negatives_no_study():
  return compare(mesh_of(("data", -1), ("fsdp", 2)), negatives="pair", use_study=False, seed=1)


def check_global_hardest():
  return compare(mesh_of(("data", -1), ("fsdp", 1)), negatives="hardest", seed=2)


def check_global_gather():
  return compare(mesh_of(("data", -1), ("fsdp", 2)), local_pairs="global_gather", seed=3)


def check_device_data8():
  return compare(mesh_of(("data", -1), ("fsdp", 1)), local_pairs="device", seed=4)


def check_device_data4_fsdp2():
  return compare(mesh_of(("data", -1), ("fsdp", 2)), local_pairs="device", negatives="pair", seed=5)


def check_device_hardest():
  return compare(
    mesh_of(("data", -1), ("fsdp", 1)), local_pairs="device", negatives="hardest", seed=13
  )


def check_model_axis():
  """A 'model' axis the batch is not split over: inputs replicated on it, same result."""
  return compare(mesh_of(("data", 2), ("fsdp", 2), ("model", 2)), seed=6)


def check_word_triplets_without_word_ce():
  weights = dict(losses.DEFAULT_WEIGHTS, word_ce_i2t=0.0, word_ce_t2i=0.0)
  return compare(mesh_of(("data", -1), ("fsdp", 1)), weights=weights, seed=7)


def check_sentence_only_without_word_inputs():
  """Word terms off: regions/words may be None, and no word term is reported."""
  mesh = mesh_of(("data", -1), ("fsdp", 1))
  weights = {
    k: (v if k in losses.SENTENCE_TERMS else 0.0) for k, v in losses.DEFAULT_WEIGHTS.items()
  }
  x = make_inputs(8)
  neg = losses.sample_negatives(jax.random.key(8), N)
  fn = losses.itm_objective(mesh, weights=weights, **HYPER)
  total, terms = jax.jit(lambda a, b: fn(a, b, None, None, None, neg, x["study_ids"]))(
    x["img_emb"], x["txt_emb"]
  )
  ref_total, ref_terms = jax.jit(
    lambda a, b: reference(weights)(a, b, None, None, None, neg, x["study_ids"])
  )(x["img_emb"], x["txt_emb"])
  return dict(
    total_rel=rel(total, ref_total), terms_rel=scalar_rel(terms, ref_terms), terms=sorted(terms)
  )


def check_explicit_mesh():
  """A mesh with Explicit axis types, called eagerly on unsharded arrays."""
  mesh = mesh_of(("data", -1), ("fsdp", 2), axis_types="explicit")
  x = make_inputs(9)
  neg = losses.sample_negatives(jax.random.key(9), N)
  fn = losses.itm_objective(mesh, **HYPER)
  total, terms = fn(
    x["img_emb"], x["txt_emb"], x["regions"], x["words"], x["word_mask"], neg, x["study_ids"]
  )
  ref_total, ref_terms = jax.jit(reference())(
    x["img_emb"], x["txt_emb"], x["regions"], x["words"], x["word_mask"], neg, x["study_ids"]
  )
  return dict(total_rel=rel(total, ref_total), terms_rel=scalar_rel(terms, ref_terms))


def check_device_mode_off_device_negative():
  """local_pairs='device' with a negative on another device: the word triplet becomes NaN (loud)."""
  mesh = mesh_of(("data", -1), ("fsdp", 1))
  x = make_inputs(10)
  neg = (jnp.arange(N, dtype=jnp.int32) + N // 2) % N  # always on another device
  fn = losses.itm_objective(mesh, local_pairs="device", **HYPER)
  _, terms = jax.jit(fn)(
    x["img_emb"], x["txt_emb"], x["regions"], x["words"], x["word_mask"], neg, None
  )
  return {k: bool(np.isnan(float(v))) for k, v in terms.items()}


def check_sample_negatives():
  """Within-shard negatives: never the anchor itself, always on the anchor's shard, all
  reachable."""
  keys = jax.random.split(jax.random.key(11), 200)
  draws = np.asarray(jax.jit(jax.vmap(lambda k: losses.sample_negatives(k, N, 4)))(keys))
  anchors = np.arange(N)
  return dict(
    self_hits=int(np.sum(draws == anchors)),
    off_shard=int(np.sum(draws // 4 != anchors // 4)),
    distinct_per_anchor=[int(len(set(draws[:, i]))) for i in range(N)],
  )


def check_param_shardings():
  """Parameters created by a jitted init with out_shardings land as the rules say."""
  mesh = mesh_of(("data", -1), ("fsdp", 2), ("model", 2))
  shapes = {
    "image": {"stem": {"kernel": (7, 7, 1, 64)}, "head": {"kernel": (512, 96), "bias": (96,)}},
    "text": {"embed": {"embedding": (1000, 128)}, "attn": {"query": {"kernel": (128, 128)}}},
  }
  rules = [(r"attn/.*/kernel$", (None, "model")), (r"embed/embedding$", ("fsdp", None))]

  def init(key):
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.normal(k, s) for k, s in zip(keys, leaves, strict=True)])

  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.param_shardings(abstract, mesh, rules, fsdp_min_size=4096)
  params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  paths = jax.tree.leaves(sharding.tree_paths(params))
  return {
    path: dict(spec=str(leaf.sharding.spec), shard=list(leaf.addressable_shards[0].data.shape))
    for path, leaf in zip(paths, jax.tree.leaves(params), strict=True)
  }


def temp_bytes(mesh, local_pairs: str, n: int, regions: int, words: int, dim: int) -> int:
  """Compiled temp bytes per device of the jitted forward + backward at n pairs per device."""
  d = sharding.num_batch_shards(mesh)
  big = n * d
  fn = losses.itm_objective(mesh, local_pairs=local_pairs, **HYPER)
  shard = sharding.batch_sharding(mesh)
  arg = lambda *shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=shard)
  grad = jax.jit(jax.grad(lambda *a: fn(*a)[0], argnums=ARGNUMS))
  compiled = grad.lower(
    arg(big, dim),
    arg(big, dim),
    arg(big, regions, dim),
    arg(big, words, dim),
    arg(big, words, dtype=jnp.bool_),
    arg(big, dtype=jnp.int32),
  ).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def check_memory_flat():
  """Per-device temp memory at a fixed per-device batch on 1 and 8 devices (meshes over subsets)."""
  sizes = dict(n=4, regions=64, words=16, dim=32)  # region-word blocks dominate, as at real sizes
  out = {}
  for d in (1, 8):
    mesh = mesh_of(("data", -1), ("fsdp", 1), devices=jax.devices()[:d])
    for mode in ("global", "global_gather"):
      out[f"{mode}_d{d}"] = temp_bytes(mesh, mode, **sizes)
  return out


def check_pieced_conv_grads():
  """A conv whose kernel gradient is summed over interleaved pieces of a batch sharded over 8
  devices: its gradients against the plain conv's on one device, and the collectives XLA put in
  (the pieces take the same images from every device's share: no activation moves)."""
  from jimte.models import conv_lowering

  mesh = mesh_of(("data", -1), ("fsdp", 1))
  batch_spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  x = jax.random.normal(jax.random.key(0), (32, 12, 12, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
  pieces = conv_lowering.kernel_grad_pieces(32, 8, 1, 2)  # 4 images per device, 2 per piece

  def loss(fn):
    return lambda x, k: jnp.sum(jnp.sin(fn(x, k)))

  pieced = loss(lambda x, k: conv_lowering.conv_pieced_kernel_grad(x, k, 2, 1, pieces))
  plain = loss(lambda x, k: conv_lowering.conv(x, k, 2, 1))
  grad = jax.jit(
    jax.grad(pieced, argnums=(0, 1)),
    in_shardings=(batch_spec, replicated),
    out_shardings=(batch_spec, replicated),
  )
  compiled = grad.lower(x, kernel).compile()
  got = compiled(jax.device_put(x, batch_spec), jax.device_put(kernel, replicated))
  want = jax.jit(jax.grad(plain, argnums=(0, 1)))(x, kernel)
  text = compiled.as_text()
  return dict(
    pieces=pieces,
    input_rel=rel(got[0], want[0]),
    kernel_rel=rel(got[1], want[1]),
    kernel_norm=float(jnp.linalg.norm(want[1])),
    activation_collectives=sum(
      text.count(op) for op in ("all-gather", "all-to-all", "collective-permute")
    ),
  )


CHECKS = {name[len("check_") :]: fn for name, fn in globals().items() if name.startswith("check_")}


def main(names: list[str]) -> None:
  if jax.device_count() != 8:
    raise SystemExit(f"expected 8 simulated devices, got {jax.device_count()}")
  results = {}
  for name in names or CHECKS:
    try:
      results[name] = CHECKS[name]()
    except Exception:  # reported per check, so one failure does not hide the others' results
      results[name] = {"error": traceback.format_exc(limit=8)}
  print(json.dumps(results))


if __name__ == "__main__":
  main(sys.argv[1:])
