"""The `jimte` console command: `jimte train|export|retrieve|classify|heatmap|sweep ARGS...`.

Each subcommand's module is imported only when it runs, so `jimte retrieve` never loads the trainer.
"""

from __future__ import annotations

import importlib
import sys

from jimte import hugepages

SUBCOMMANDS = {
  "train": "train the model (python -m jimte.main flags: --config, --workdir, ...)",
  "export": "embeddings of images / reports into a Parquet export (jimte.export)",
  "retrieve": "top-K cases of an export for an image, a text or an exported id (jimte.retrieve)",
  "classify": "classify X-rays with a trained model (jimte.classify)",
  "heatmap": "where a trained model grounds a report's findings in an X-ray (jimte.heatmap)",
  "sweep": "run / print / collect an ablation sweep of configs/sweeps (launch.sweep)",
  "alc-retrieve": "anatomy-conditioned retrieval from an --anatomy export (jimte.alc_retrieve)",
  "ms-cxr": "phrase grounding on MS-CXR's boxes (jimte.evaluate.ms_cxr)",
}
MODULES = {
  "export": "jimte.export",
  "retrieve": "jimte.retrieve",
  "classify": "jimte.classify",
  "heatmap": "jimte.heatmap",
  "sweep": "launch.sweep:cli",
  "alc-retrieve": "jimte.alc_retrieve",
  "ms-cxr": "jimte.evaluate.ms_cxr",
}


def usage() -> str:
  lines = ["usage: jimte {" + ",".join(SUBCOMMANDS) + "} ARGS...", ""]
  lines += [f"  {name:12s} {text}" for name, text in SUBCOMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  if argv is None:  # the command line, not a caller in this process
    hugepages.reexec_with_hugepages()
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(usage())
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name == "train":
    from absl import app

    from jimte import main as train_main

    app.run(train_main.main, argv=["jimte train", *rest])
    return 0
  if name not in MODULES:
    print(f"jimte: unknown subcommand {name!r}\n{usage()}", file=sys.stderr)
    return 2
  module_name, _, function = MODULES[name].partition(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    print(f"jimte {name}: {module_name} cannot be imported ({e})", file=sys.stderr)
    return 2
  entry = getattr(module, function or "main", None)
  if entry is None:
    print(f"jimte {name}: {module_name} has no {function or 'main'}(argv)", file=sys.stderr)
    return 2
  result = entry(rest)
  return int(result or 0)


if __name__ == "__main__":
  sys.exit(main())
