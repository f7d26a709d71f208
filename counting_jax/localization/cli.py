"""``counting-jax localization-metrics --gt GT.txt --pred PRED.txt``.

The official NWPU-Crowd localization evaluation of a prediction file
(``id num (x y)*num``) against a ground-truth file
(``id num (x y sigma_s sigma_l level)*num``), see
:func:`counting_jax.metrics.nwpu_localization_metrics`. Prints the official
table and, with ``--json OUT.json``, writes ``{"sigma_l": {"f1",
"precision", "recall", "level_recall": [6], "tp", "fp", "fn"}, "sigma_s":
{...}, "counting": {"mae", "rmse", "nae"}, "num_images"}``. Example::

  counting-jax localization-metrics --gt val_gt_loc.txt \
      --pred Raz_loc_val_0.5.txt --json raz.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from counting_jax import metrics

__all__ = ["format_report", "main"]


def format_report(result: dict) -> str:
  """The official table as text (sigma_l first, the usual headline)."""
  lines = []
  for key, name in (("sigma_l", "sigma_l"), ("sigma_s", "sigma_s")):
    r = result[key]
    levels = " ".join(f"{v:.4f}" for v in r["level_recall"])
    lines.append(f"{name}: F1 {r['f1']:.4f}  precision {r['precision']:.4f}"
                 f"  recall {r['recall']:.4f}  (TP {r['tp']} FP {r['fp']} "
                 f"FN {r['fn']})")
    lines.append(f"  recall per level A0-A5: {levels}  "
                 f"(mean {sum(r['level_recall']) / 6:.4f})")
  c = result["counting"]
  lines.append(f"counting: MAE {c['mae']:.3f}  RMSE {c['rmse']:.3f}  "
               f"NAE {c['nae']:.4f}  ({result['num_images']} images)")
  return "\n".join(lines)


def main(argv=None) -> int:
  """Runs the evaluation; returns 0, or 2 with the error on stderr."""
  parser = argparse.ArgumentParser(
      prog="counting-jax localization-metrics",
      description="NWPU-Crowd localization metric (official evaluation).")
  parser.add_argument("--gt", required=True,
                      help="ground truth: id num (x y sigma_s sigma_l "
                      "level)*num")
  parser.add_argument("--pred", required=True,
                      help="predictions: id num (x y)*num")
  parser.add_argument("--json", default=None, help="write the result here")
  args = parser.parse_args(argv)
  try:
    gt = metrics.read_nwpu_gt(args.gt)
    pred = metrics.read_nwpu_pred(args.pred)
    extra = [i for i in pred if i not in gt]
    if extra:
      print(f"note: {args.pred}: {len(extra)} id(s) not in {args.gt} are "
            f"not evaluated (the official script ignores them too): "
            f"{extra[:10]}{' ...' if len(extra) > 10 else ''}",
            file=sys.stderr)
    result = metrics.nwpu_localization_metrics(pred, gt)
  except (ValueError, KeyError, FileNotFoundError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"counting-jax localization-metrics: {message}", file=sys.stderr)
    return 2
  print(format_report(result))
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
