"""`jimte heatmap`: a PNG of where a trained model grounds a report's findings in an X-ray.

  jimte heatmap --workdir W --image case.png --text "Small left pleural effusion." --out fig.png
  jimte heatmap --workdir W --image case.dcm --report-file report.txt --phrase effusion --out f.png

Per finding phrase (the labeler's positive or uncertain mentions, or each --phrase): the
word->region attention and the region-phrase cosine map, in the original image's pixels, the
maximum marked.
For the retrieved cases of a query image: `jimte retrieve --image q.png --heatmaps DIR`.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="jimte heatmap", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="the trained work dir")
  p.add_argument("--image", required=True, help="X-ray file: PNG, JPEG, 16-bit PNG or DICOM")
  text = p.add_mutually_exclusive_group(required=True)
  text.add_argument("--text", help="the report text")
  text.add_argument("--report-file", help="a file holding the report text")
  p.add_argument("--phrase", action="append", default=[], help="a phrase of the report to map")
  p.add_argument("--out", required=True, help="the PNG to write")
  args = p.parse_args(argv)
  try:
    report = args.text
    if args.report_file is not None:
      with open(args.report_file, encoding="utf-8") as f:
        report = f.read()
    if not report or not report.strip():
      raise ValueError("the report text is empty")
    from jimte.evaluate import heatmaps
    from jimte.inference import JimteModel

    model = JimteModel.from_workdir(args.workdir)
    path = heatmaps.pair_heatmap(model, args.image, report, args.out, phrases=args.phrase)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"jimte heatmap: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
