"""Checking report pages in a real browser: headless Chromium, driven directly.

:func:`check_page` opens a page with a script that records, after the page's load event,
its tables, headings and every image's ``naturalWidth`` (0: the image did not load) and
reads that record back from the DOM Chromium dumps. :func:`screenshot` writes a PNG of the
page. Both need a Chromium binary (Debian package ``chromium``); :func:`find_chromium` says
whether there is one. Used by ``tests/report_test.py`` and ``experiments/report_screenshots.py``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from typing import Any

from vae_qc.errors import VaeQcError

_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
          '--disable-component-update', '--disable-sync', '--no-first-run',
          '--disable-default-apps', '--disable-extensions', '--mute-audio',
          '--hide-scrollbars')

_PROBE = """<script>
window.addEventListener('load', function () {
  var r = {
    title: document.title,
    headings: Array.from(document.querySelectorAll('h1,h2')).map(function (h) {
      return h.textContent; }),
    tables: Array.from(document.querySelectorAll('table')).map(function (t) {
      return {id: t.id, rows: t.rows.length,
              cols: t.rows.length ? t.rows[0].cells.length : 0}; }),
    images: Array.from(document.images).map(function (i) {
      return {src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth,
              height: i.naturalHeight}; }),
    text: document.body.innerText.slice(0, 4000)
  };
  var pre = document.createElement('pre');
  pre.id = 'vaeqc-probe';
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


def find_chromium() -> str | None:
  """The path of a Chromium / Chrome binary, or None."""
  for name in (os.environ.get('VAE_QC_CHROMIUM', ''), 'chromium', 'chromium-browser',
               'google-chrome', 'google-chrome-stable'):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
  binary = find_chromium()
  if binary is None:
    raise VaeQcError('no Chromium found (Debian: apt-get install -y chromium).')
  with tempfile.TemporaryDirectory(prefix='vaeqc-chromium-') as profile:
    return subprocess.run([binary, *_FLAGS, f'--user-data-dir={profile}', *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def check_page(path: str, timeout: float = 120) -> dict[str, Any]:
  """Loads ``path`` (an HTML file) in headless Chromium; returns what the page showed:
  {'title', 'headings': [str], 'tables': [{'id', 'rows', 'cols'}], 'images': [{'src',
  'complete', 'width', 'height'}], 'text'}. Relative image paths resolve as they would for the
  page itself (the probe is a copy next to it, deleted afterwards)."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  probed = text.replace('</body>', _PROBE + '</body>') if '</body>' in text else text + _PROBE
  folder = os.path.dirname(os.path.abspath(path))
  fd, copy = tempfile.mkstemp(dir=folder, prefix='.probe-', suffix='.html')
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(probed)
    result = _run(['--virtual-time-budget=15000', '--dump-dom', 'file://' + copy], timeout)
  finally:
    os.remove(copy)
  match = re.search(r'<pre id="vaeqc-probe">(.*?)</pre>', result.stdout, re.S)
  if not match:
    raise VaeQcError(f'Chromium did not render {path} (exit status {result.returncode}): '
                     f'{result.stderr.strip()[-500:]}')
  import html  # pylint: disable=g-import-not-at-top
  return json.loads(html.unescape(match.group(1)))


def screenshot(path: str, png: str, width: int = 1280, height: int = 1600,
               timeout: float = 120) -> str:
  """A PNG of the top ``width``×``height`` pixels of the page ``path``; returns ``png``."""
  os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
  result = _run([f'--window-size={width},{height}', '--virtual-time-budget=15000',
                 f'--screenshot={os.path.abspath(png)}', 'file://' + os.path.abspath(path)],
                timeout)
  if not os.path.exists(png) or os.path.getsize(png) == 0:
    raise VaeQcError(f'Chromium wrote no screenshot of {path} (exit status '
                     f'{result.returncode}): {result.stderr.strip()[-500:]}')
  return png
