"""A check shared by the print integration tests: predict.py on the run's own test folder gives
the run's scores.csv, score by score and verdict by verdict."""
import csv
import json
import os

from vae_qc import predict


def assert_predict_equals_evaluate(workdir: str, out: str, score_names) -> dict:
  """Runs predict on the run's test images into ``out``; returns predict's summary."""
  data_root = json.load(open(os.path.join(workdir, 'results.json')))['data']['root']
  summary = predict.predict(workdir, os.path.join(data_root, 'test'), out)
  ours = {r['id']: r for r in csv.DictReader(open(os.path.join(out, 'scores.csv')))}
  theirs = {r['id']: r for r in csv.DictReader(open(os.path.join(workdir, 'scores.csv')))}
  assert set(ours) == set(theirs)
  for i in ours:
    for name in score_names:
      assert float(ours[i][name]) == float(theirs[i][name]), (i, name)
    assert ours[i]['verdict'] == theirs[i]['verdict']
  return summary
