"""Step cost and model-FLOPs utilisation: FLOPs per step from XLA's cost analysis of the compiled
step (`compiled_flops`, used by `jimte.steps.TrainSteps`), over the device's peak.

MFU = (FLOPs one device executes per step) x (steps per second) / (that device's peak FLOP/s). The
compiled SPMD program is per device, so its cost analysis is already per device.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

log = logging.getLogger("jimte.perf")

# Peak FLOP/s per device (dense bf16 for accelerators). CPU: the float32 matmul peak measured on the
# project's 2-core development machine (~150 GFLOP/s); set config.peak_flops_per_device elsewhere.
PEAK_FLOPS_BY_KIND = (
  ("TPU v6", 918e12),
  ("TPU v5p", 459e12),
  ("TPU v5", 197e12),
  ("TPU v4", 275e12),
  ("TPU v3", 123e12),
  ("H200", 989e12),
  ("H100", 989e12),
  ("A100", 312e12),
  ("cpu", 150e9),
)


def device_peak_flops(configured: float = 0.0, device: Any | None = None) -> float:
  """The configured peak if > 0, else a table entry for the device kind (0 if unknown)."""
  if configured > 0:
    return float(configured)
  device = device or jax.devices()[0]
  kind = f"{device.platform} {getattr(device, 'device_kind', '')}"
  for name, peak in PEAK_FLOPS_BY_KIND:
    if name.lower() in kind.lower():
      return peak
  return 0.0


def compiled_flops(compiled) -> float:
  """FLOPs of one execution of a compiled computation, per device (0 if XLA does not say)."""
  try:
    cost = compiled.cost_analysis()
  except Exception as e:  # some backends do not implement it
    log.warning("no cost analysis: %s", e)
    return 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))
