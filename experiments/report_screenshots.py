r"""Checks report pages in headless Chromium and writes their screenshots (docs/img/).

  python experiments/report_screenshots.py runs/print/report.html:docs/img/report_study.png \
      runs/print_pred/report.html:docs/img/report_predict.png \
      runs/sweep/report.html:docs/img/report_sweep.png:900

Each page is first checked as ``tests/report_test.py`` checks it (``vae_qc.browser``: every
image loaded, tables present); then the top of it is captured.
"""
import sys

from vae_qc import browser


def main(pairs: list[str], width: int = 1280, height: int = 1500) -> int:
  for pair in pairs:  # PAGE:PNG or PAGE:PNG:HEIGHT
    parts = pair.split(':')
    page, png = parts[0], parts[1]
    h = int(parts[2]) if len(parts) > 2 else height
    seen = browser.check_page(page)
    broken = [im['src'] for im in seen['images'] if not im['width']]
    if broken or not seen['tables']:
      print(f'error: {page}: {len(seen["tables"])} tables, images not loaded: {broken}',
            file=sys.stderr)
      return 1
    browser.screenshot(page, png, width, h)
    print(f'{page}: {len(seen["tables"])} tables, {len(seen["images"])} images, all loaded '
          f'-> {png}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
