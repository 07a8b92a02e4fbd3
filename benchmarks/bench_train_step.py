"""Speed of the full jitted train step (image-text step and MLM step) on fake batches, as ratios.

  python -m benchmarks.bench_train_step                          # default config
  python -m benchmarks.bench_train_step --config paper --image_sizes 512,1024,2048 --batch_sizes 8
  python -m benchmarks.bench_train_step --config paper --dtype bfloat16 --image_sizes 2048 \
      --batch_sizes 128 --peak_n 8192                            # on an accelerator

For each input size and batch: compile time, seconds per step, pairs/s, the model FLOPs of the
step's matmuls and convolutions (`_flops`) and the model FLOPs utilisation (MFU) against a matmul
peak measured in the same run;
then the roofline of the high-resolution early image stages (stem and the first stages, forward and
backward): the bytes XLA says they move over the copy bandwidth measured in the same run, their
FLOPs over the peak, and their measured time; and the image-text step's floor on this machine
(`itm_floor_s`: the early stages at the slower of their bandwidth and compute floors, every other
FLOP at the peak: the bound for XLA's fusions of those stages; `itm_compute_floor_s`: every FLOP
at the peak, the bound for any change that keeps the maths). `--flops_only` counts the steps'
FLOPs and runs nothing (to count, on a small machine, those of a size timed elsewhere). Run as a
program, it re-executes itself with huge pages for malloc (`jimte.hugepages`; set
JIMTE_HUGEPAGE_MALLOC=0 to time without). Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import csv
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _flops, _timing
from configs import default as default_config
from configs import joimternet_paper
from jimte import batches as batches_lib
from jimte import optim, sharding, steps
from jimte.models.image import JoImTeRNetResNet
from jimte.models.joimternet import DTYPES, build_model

IU_REPORTS = (
  Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray" / "reports_openi.csv"
)


def iu_report_lengths(path: Path = IU_REPORTS) -> np.ndarray:
  """Tokens per IU X-ray report under the release's word vocabulary: its words (findings and
  impression; numbers count as words) plus [BOS] and [EOS]."""
  if not path.exists():
    raise FileNotFoundError(f"{path}: the IU X-ray reports (../shared/data) are not here")
  with path.open(newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  words = [re.findall(r"[A-Za-z]+|\d+", f"{r['findings']} {r['impression']}") for r in rows]
  return np.array([len(w) + 2 for w in words if w])


def fake_batch(
  rng: np.random.Generator,
  batch: int,
  image_size: int,
  max_len: int,
  vocab: int,
  lengths: np.ndarray | None = None,
) -> dict:
  """A batch of the contract's keys: random pixels and ids; report lengths drawn uniformly from
  [max_len / 2, max_len], or from `lengths` (capped at max_len)."""
  tokens = rng.integers(5, vocab, size=(batch, max_len)).astype(np.int32)
  if lengths is None:
    lengths = rng.integers(max_len // 2, max_len + 1, size=batch)
  else:
    lengths = np.minimum(rng.choice(lengths, size=batch), max_len)
  pad = np.arange(max_len)[None, :] >= lengths[:, None]
  tokens[pad] = 0
  tokens[:, 0] = 2
  tokens[np.arange(batch), lengths - 1] = 3
  weights = (rng.random((batch, max_len)) < 0.15) & ~pad
  return {
    "image": rng.uniform(-1, 1, (batch, image_size, image_size, 1)).astype(np.float32),
    "tokens": tokens,
    "mlm_tokens": np.where(weights, 4, tokens).astype(np.int32),
    "mlm_targets": np.where(weights, tokens, 0).astype(np.int32),
    "mlm_weights": weights.astype(np.float32),
    "study_index": np.arange(batch, dtype=np.int32),
    "index": np.arange(batch, dtype=np.int32),
    "valid": np.ones(batch, bool),
  }


def bytes_accessed(compiled: Any) -> float:
  """Bytes that XLA's cost analysis says a compiled computation reads and writes: counted after
  fusion, so the traffic to memory that actually happens."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("bytes accessed", 0.0))


def median_step_seconds(step, state, batch, repeats: int):
  """(state, median seconds) of `repeats` donated calls of `step`, after the given warm state."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return state, float(np.median(times))


def train_steps(config):
  """(train state, its shardings, the batch sharding, {"itm": fn, "mlm": fn}) for `config`."""
  mesh = sharding.make_mesh(config.mesh)
  model = build_model(config.model.copy_and_resolve_references(), sharding.num_batch_shards(mesh))
  optimizers = optim.make_optimizers(config.optim)
  schedule = optim.make_schedule(config.optim, 100, 1000)
  state, shardings = steps.init_train_state(config, model, optimizers, mesh, jax.random.key(0))
  step_fns = {
    "itm": steps.make_itm_step(
      config, model, optimizers, schedule, steps.make_objective(config, mesh), mesh
    ),
    "mlm": steps.make_mlm_step(config, model, optimizers, schedule),
  }
  return state, shardings, sharding.batch_sharding(mesh), step_fns


def host_batch(
  config, lengths: np.ndarray | None = None, longest: int = 0
) -> dict[str, np.ndarray]:
  """One fake batch, cut to the config's text-length bucket (`config.text_buckets`); `longest` > 0
  makes every report that many tokens long (a batch costs what its bucket costs, whatever the
  lengths of its other reports: to time one bucket)."""
  if longest:
    lengths = np.array([longest])
  batch = fake_batch(
    np.random.default_rng(0),
    config.batch_size,
    config.image_size,
    config.tokenizer.max_len,
    config.model.text.vocab_size,
    lengths,
  )
  buckets = batches_lib.check_text_buckets(config.text_buckets, config.tokenizer.max_len)
  return next(batches_lib.trim_text([batch], buckets))


def bucket_shares(config, lengths: np.ndarray, draws: int = 20000) -> dict[int, float]:
  """{bucket: share of random batches of `config.batch_size` reports of `lengths` that it holds}
  (`config.text_buckets`; without buckets every batch runs at max_len)."""
  max_len = config.tokenizer.max_len
  buckets = batches_lib.check_text_buckets(config.text_buckets, max_len) or (max_len,)
  rng = np.random.default_rng(0)
  longest = np.minimum(rng.choice(lengths, (draws, config.batch_size)).max(1), max_len)
  chosen = np.array([batches_lib.bucket_length(int(n), buckets) for n in longest])
  return {b: float(np.mean(chosen == b)) for b in buckets if np.any(chosen == b)}


def step_flops(config, lengths: np.ndarray | None = None) -> dict[str, float]:
  """Model GFLOPs of each step kind, counted on the jaxpr (nothing runs but the init); with
  report `lengths`, the expectation over the text buckets of random batches."""
  state, _, _, step_fns = train_steps(config)
  shares = {0: 1.0} if lengths is None else bucket_shares(config, lengths)
  out = dict.fromkeys(step_fns, 0.0)
  for longest, share in shares.items():
    batch = {  # the shapes only: a 2048 px batch of 128 is 2 GiB
      k: jax.ShapeDtypeStruct(v.shape, v.dtype)
      for k, v in host_batch(config, longest=longest).items()
    }
    for name, fn in step_fns.items():
      out[name] += share * _flops.model_flops(fn, state, batch) / 1e9
  return {f"{name}_gflop": v for name, v in out.items()}


def bench_steps(config, repeats: int, peak_flops: float, longest: int = 0) -> dict[str, float]:
  """Compile time, s/step, pairs/s, model FLOPs and MFU of the image-text and the MLM step."""
  state, shardings, batch_sharding, step_fns = train_steps(config)
  batch = jax.device_put(host_batch(config, longest=longest), batch_sharding)
  out = {"token_positions": float(batch["tokens"].shape[1])}
  for name, fn in step_fns.items():
    flops = _flops.model_flops(fn, state, batch)
    t0 = time.perf_counter()
    step = jax.jit(
      fn,
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, None),
      donate_argnums=(0,),
    )
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    out[f"{name}_compile_s"] = time.perf_counter() - t0
    state, seconds = median_step_seconds(step, state, batch, repeats)
    out[f"{name}_step_s"] = seconds
    out[f"{name}_pairs_per_s"] = config.batch_size / seconds
    out[f"{name}_gflop"] = flops / 1e9
    out[f"{name}_mfu_pct"] = 100.0 * flops / seconds / (peak_flops * jax.device_count())
  p = config.loss.itm_probability if config.loss.mixture else 1.0
  mixed = p * out["itm_step_s"] + (1 - p) * out["mlm_step_s"]
  out["mixture_pairs_per_s"] = config.batch_size / mixed
  return out


def expected_over_buckets(
  config, repeats: int, peak_flops: float, lengths: np.ndarray, min_share: float = 0.0
) -> dict[str, float]:
  """The steps timed at each text bucket that holds more than `min_share` of random batches of
  reports of `lengths`, and their expectation over an epoch (shares renormalised). Every bucket
  by default: leaving out the rare long ones would leave out the slowest steps."""
  shares = {b: p for b, p in bucket_shares(config, lengths).items() if p > min_share}
  total = sum(shares.values())
  out: dict[str, float] = {}
  per_bucket = {}
  for bucket, share in shares.items():
    per_bucket[bucket] = bench_steps(config, repeats, peak_flops, longest=bucket)
    out[f"share_of_batches_at_{bucket}"] = share / total
    for kind in ("itm", "mlm"):
      out[f"{kind}_step_s_at_{bucket}"] = per_bucket[bucket][f"{kind}_step_s"]
  for key in ("itm_step_s", "mlm_step_s", "itm_gflop", "mlm_gflop"):
    out[key] = sum(per_bucket[b][key] * p for b, p in shares.items()) / total
  for kind in ("itm", "mlm"):
    out[f"{kind}_pairs_per_s"] = config.batch_size / out[f"{kind}_step_s"]
    out[f"{kind}_mfu_pct"] = (
      100.0 * out[f"{kind}_gflop"] * 1e9 / out[f"{kind}_step_s"] / (peak_flops * jax.device_count())
    )
  p = config.loss.itm_probability if config.loss.mixture else 1.0
  out["mixture_pairs_per_s"] = config.batch_size / (
    p * out["itm_step_s"] + (1 - p) * out["mlm_step_s"]
  )
  return out


def early_stages_tower(config, num_stages: int) -> JoImTeRNetResNet:
  """The image tower's stem and first `num_stages` stages (no soft attention), with 8-dim heads:
  the high-resolution part of the network, whose layers are memory- rather than compute-bound."""
  image = config.model.image
  return JoImTeRNetResNet(
    embed_dim=8,
    widths=tuple(image.widths)[:num_stages],
    stem_width=image.get("stem_width"),
    blocks_per_stage=image.get("blocks_per_stage", 2),
    first_stage_stride=image.first_stage_stride,
    attention_stages=(),
    region_stage=-1,
    global_pool_size=1,
    conv_kernel_grad_mb=image.get("conv_kernel_grad_mb", 0.0),
    dtype=DTYPES[config.model.dtype],
  )


def early_stages_gradient(config, num_stages: int):
  """(gradient function, its arguments) of the early stages' forward + backward in training mode
  (BatchNorm statistics of the batch), on random images of the config's size and batch."""
  tower = early_stages_tower(config, num_stages)
  images = jnp.asarray(
    np.random.default_rng(0).uniform(
      -1, 1, (config.batch_size, config.image_size, config.image_size, 1)
    ),
    jnp.float32,
  )
  variables = tower.init(jax.random.key(0), images[:1], train=False)

  def loss(params, batch_stats, images):
    out, _ = tower.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    return jnp.sum(out.regions**2) + jnp.sum(out.global_emb**2)

  return jax.grad(loss), (variables["params"], variables["batch_stats"], images)


def bench_early_stages(
  config, num_stages: int, repeats: int, peak_flops: float, bandwidth: float
) -> dict[str, float]:
  """Forward + backward of the early stages in training mode: bytes and FLOPs XLA counts, the
  bandwidth and compute floors they imply, and the measured time."""
  gradient, args = early_stages_gradient(config, num_stages)
  flops = _flops.model_flops(gradient, *args)
  grad = jax.jit(gradient).lower(*args).compile()
  moved = bytes_accessed(grad)
  seconds = _timing.time_fn(grad, *args, repeats=repeats)
  return {
    "early_gflop": flops / 1e9,
    "early_gbytes": moved / 1e9,
    "early_intensity_flop_per_byte": flops / max(moved, 1.0),
    "early_bandwidth_floor_s": moved / bandwidth,
    "early_compute_floor_s": flops / peak_flops,
    "early_measured_s": seconds,
  }


def itm_floor(results: dict[str, float], peak_flops: float) -> dict[str, float]:
  """The fastest this machine could run the same image-text step: the early stages at the slower
  of their bandwidth floor and their FLOPs at the matmul peak, every other FLOP of the step at the
  peak (a bound, not a forecast: the early stages' bytes are those of XLA's current fusions)."""
  peak_flops = peak_flops * jax.device_count()
  early_flops = results["early_gflop"] * 1e9
  rest_flops = results["itm_gflop"] * 1e9 - early_flops
  early_floor = max(results["early_bandwidth_floor_s"], early_flops / peak_flops)
  floor = early_floor + rest_flops / peak_flops
  return {
    # Every FLOP at the peak: no faster with any layout or fusion.
    "itm_compute_floor_s": results["itm_gflop"] * 1e9 / peak_flops,
    "itm_floor_s": floor,
    # The MFU the step would need to run at this floor; measured MFU over it is the share of the
    # bound reached.
    "itm_floor_mfu_pct": 100.0 * results["itm_gflop"] * 1e9 / floor / peak_flops,
    "itm_share_of_floor_pct": 100.0 * floor / results["itm_step_s"],
  }


def measure_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
  """Bytes/s of a jitted elementwise pass over a float32 array (read once, written once).

  The input is donated, so the pass writes into memory it already holds: a fresh output would be
  faulted in page by page, and that (9 to 46 times slower here with 4 KiB pages) is not the
  bandwidth."""
  x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
  fn = jax.jit(lambda v: v * 1.0001 + 1.0, donate_argnums=0)
  best = float("inf")
  for _ in range(repeats + 1):  # the first pass compiles
    start = time.perf_counter()
    x = jax.block_until_ready(fn(x))
    best = min(best, time.perf_counter() - start)
  return 2 * x.nbytes / best


def paper_or_default(name: str):
  return default_config.get_config() if name == "default" else joimternet_paper.get_config()


def configured(
  name: str,
  image_size: int,
  batch_size: int,
  dtype: str,
  vocab_size: int = 0,
  text_buckets: str | None = None,
):
  """The `name` config ("default" | "paper") at this input size, batch and dtype; `text_buckets`
  "64,96,160" or "none" replaces the config's."""
  config = paper_or_default(name)
  config.image_size = image_size
  config.batch_size = batch_size
  config.model.dtype = dtype
  if vocab_size:
    config.model.text.vocab_size = vocab_size
  if text_buckets is not None:
    config.text_buckets = () if text_buckets == "none" else tuple(int_list(text_buckets))
  return config


def int_list(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--config", choices=["default", "paper"], default="default")
  parser.add_argument("--image_sizes", type=int_list, default=[], help="e.g. 512,1024,2048")
  parser.add_argument("--batch_sizes", type=int_list, default=[], help="e.g. 8,32")
  parser.add_argument("--image_size", type=int, default=0, help="one input size (old flag)")
  parser.add_argument("--batch_size", type=int, default=0, help="one batch size (old flag)")
  parser.add_argument("--dtype", choices=sorted(DTYPES), default="")
  parser.add_argument("--vocab_size", type=int, default=0)
  parser.add_argument(
    "--lengths",
    choices=["uniform", "iu"],
    default="uniform",
    help="report lengths: uniform in [L/2, L], or drawn from the IU X-ray reports",
  )
  parser.add_argument(
    "--text_buckets", default=None, help="e.g. 64,96,128,160 or none (default: the config's)"
  )
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--early_stages", type=int, default=2, help="stages in the roofline (0: off)")
  parser.add_argument("--peak_n", type=int, default=2048, help="side of the peak matmul probe")
  parser.add_argument(
    "--flops_only", action="store_true", help="print the steps' model FLOPs, run nothing"
  )
  args = parser.parse_args(argv)
  base = paper_or_default(args.config)
  sizes = args.image_sizes or [args.image_size or base.image_size]
  batches = args.batch_sizes or [args.batch_size or base.batch_size]
  dtype = args.dtype or base.model.dtype
  lengths = iu_report_lengths() if args.lengths == "iu" else None

  def config_of(image_size: int, batch_size: int):
    return configured(
      args.config, image_size, batch_size, dtype, args.vocab_size, args.text_buckets
    )

  if args.flops_only:
    for image_size in sizes:
      for batch_size in batches:
        config = config_of(image_size, batch_size)
        counts = " ".join(f"{k}={v:.1f}" for k, v in step_flops(config, lengths).items())
        print(f"image_size={image_size} batch={batch_size} {counts}", flush=True)
    return

  peak = _timing.measure_matmul_peak_gflops(args.peak_n, dtype=DTYPES[dtype]) * 1e9
  bandwidth = measure_bandwidth()
  print(
    f"config={args.config} dtype={dtype} max_len={base.tokenizer.max_len} "
    f"lengths={args.lengths} text_buckets={config_of(0, 0).text_buckets} "
    f"devices={jax.device_count()} backend={jax.default_backend()} "
    f"device={jax.devices()[0].device_kind}"
  )
  print(
    f"same-run ceilings: {dtype} matmul peak {peak / 1e9:.1f} GFLOP/s (n={args.peak_n}), "
    f"copy bandwidth {bandwidth / 1e9:.1f} GB/s"
  )
  for image_size in sizes:
    for batch_size in batches:
      config = config_of(image_size, batch_size)
      print(f"image_size={image_size} batch={batch_size}", flush=True)
      if lengths is None:
        results = bench_steps(config, args.repeats, peak)
      else:
        results = expected_over_buckets(config, args.repeats, peak, lengths)
      if args.early_stages:
        results.update(bench_early_stages(config, args.early_stages, args.repeats, peak, bandwidth))
        results["early_share_of_itm_pct"] = (
          100.0 * results["early_measured_s"] / results["itm_step_s"]
        )
        results.update(itm_floor(results, peak))
      for key, value in results.items():
        print(f"  {key:32s} {value:12.4f}", flush=True)


if __name__ == "__main__":
  from jimte import hugepages

  hugepages.reexec_with_hugepages()  # before any buffer: XLA:CPU step times depend on it
  main()
