r"""Two or more trained runs as one detector: the mean of their anomaly maps on their test set.

  python experiments/fuse_maps.py --workdir=runs/valL_brick_recipe --workdir=runs/valL_brick_p16

The runs must be trained on the same data (they may cut patches of other sizes) and map with
the same ``config.eval.map``. Prints one row per run and one for the fusion: image AUROC (the
mean of the map's ``eval.map_topk`` largest pixels), pixel AUROC, AUPRO and image AUROC per
defect kind; ``--out`` also writes them as JSON (``vae_qc.fusion.evaluate_fusion``).
"""
from __future__ import annotations

from absl import app
from absl import flags

from vae_qc import cli

_WORKDIRS = flags.DEFINE_multi_string('workdir', None, 'A trained run; twice or more.')
_OUT = flags.DEFINE_string('out', '', 'Also write the figures to this JSON file.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  def go():
    from vae_qc import fusion  # pylint: disable=g-import-not-at-top  # after the CPU tuning
    from vae_qc import workdir as wd  # pylint: disable=g-import-not-at-top
    result = fusion.evaluate_fusion(_WORKDIRS.value)
    rows = [*result['runs'].items(), ('fused (mean)', result['fused'])]
    kinds = sorted(result['fused']['per_defect'])
    print(f'map {result["map"]}, image score: mean of the {result["topk"]} largest pixels')
    print('| map of | image AUROC | pixel AUROC | AUPRO | ' + ' | '.join(kinds) + ' |')
    print('|---' * (4 + len(kinds)) + '|')
    for name, f in rows:
      per = ' | '.join(f'{f["per_defect"][k]["image_auroc"]:.3f}' for k in kinds)
      print(f'| {name} | {f["image_auroc"]:.3f} | {f["pixel_auroc"]:.3f} | {f["aupro"]:.3f} | '
            f'{per} |')
    if _OUT.value:
      wd.write_json(_OUT.value, result)
      print(f'wrote {_OUT.value}')
  cli.run(go, 'fuse_maps')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
