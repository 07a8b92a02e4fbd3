"""Where the image tower's high-resolution stages spend a training step: XLA's per-thunk profile.

  python -m benchmarks.profile_early_stages --image_size 1024 --batch_size 32 [--kernel_grad_mb 0]

Runs forward + backward of the paper tower's stem and first two stages (training mode, as in
`bench_train_step.bench_early_stages`) under `jax.profiler`, reads the trace's per-thunk times,
and sums them by the kind of HLO each thunk runs: the kernel-gradient convolutions, the
transposes XLA:CPU puts before them, the input-dilated convolutions of the strided convs' input
gradients, the other convolutions (forward and input gradients) and the rest. Milliseconds per
step, with the slowest thunks and the layers they belong to. Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax

from benchmarks.bench_train_step import configured, early_stages_gradient, early_stages_tower
from jimte import hugepages

_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(")


def instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (its shape, its whole line) of an optimised HLO module's text."""
  found = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      found[match.group(1)] = (match.group(2), line)
  return found


def kind_of(name: str, shape: str, line: str) -> str:
  """The group a thunk's time is summed into."""
  dims = re.search(r"\[([\d,]*)\]", shape)
  dims = [int(d) for d in dims.group(1).split(",") if d] if dims else []
  is_conv = "convolution" in line or name.startswith("ynn_fusion")
  if is_conv and len(dims) == 4 and dims[1] <= 7 and dims[2] <= 7:  # [in, kh, kw, out]
    return "kernel-gradient convs"
  if name.startswith("transpose"):
    return "transposes"
  if "lhs_dilate" in line:
    return "input-dilated convs (strided input gradients)"
  if is_conv:
    return "other convs and ynn fusions"
  return "other"


def thunk_milliseconds(trace_dir: str, names: dict, steps: int) -> dict[str, float]:
  """Per-step milliseconds of each thunk named in `names`, from the trace `jax.profiler` wrote."""
  (path,) = glob.glob(f"{trace_dir}/plugins/profile/*/*.trace.json.gz")
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  total = collections.defaultdict(float)
  for event in events:
    if event.get("ph") == "X" and event["name"] in names:
      total[event["name"]] += event["dur"] / 1e3 / steps
  return dict(total)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=1024)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--kernel_grad_mb", type=float, default=None, help="default: the config's")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=12)
  args = parser.parse_args(argv)

  config = configured("paper", args.image_size, args.batch_size, "float32")
  if args.kernel_grad_mb is not None:
    config.model.image.conv_kernel_grad_mb = args.kernel_grad_mb
  gradient, inputs = early_stages_gradient(config, 2)
  compiled = jax.jit(gradient).lower(*inputs).compile()
  names = instructions(compiled.as_text())
  for _ in range(2):
    jax.block_until_ready(compiled(*inputs))
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(args.steps):
      jax.block_until_ready(compiled(*inputs))
    jax.profiler.stop_trace()
    per_thunk = thunk_milliseconds(trace_dir, names, args.steps)

  groups = collections.defaultdict(float)
  for name, ms in per_thunk.items():
    groups[kind_of(name, *names[name])] += ms
  budget = early_stages_tower(config, 2)._kernel_grad_budget_bytes() / 1e6  # -1 resolved
  print(
    f"early stages (stem + 2 stages), {args.image_size} px, B={args.batch_size}, "
    f"kernel-gradient pieces of <= {budget:g} MB: {sum(per_thunk.values()):.0f} ms of thunks/step"
  )
  for kind, ms in sorted(groups.items(), key=lambda item: -item[1]):
    print(f"  {kind:48s} {ms:8.1f} ms")
  print("slowest thunks:")
  for name, ms in sorted(per_thunk.items(), key=lambda item: -item[1])[: args.top]:
    shape, line = names[name]
    layer = re.search(r'op_name="([^"]+)"', line)
    print(f"  {ms:8.1f} ms  {name:32s} {shape.split('{')[0]:24s} {layer.group(1) if layer else ''}")


if __name__ == "__main__":
  hugepages.reexec_with_hugepages()  # before any buffer: XLA:CPU step times depend on it
  main()
