"""Print-image study, the paper's setting (ch. 4): 224×224 photos, blocks 16/32/64/128,
FC 128, latent 64, 200 epochs. Meant for an accelerator; `print_cpu.py` is a short variant.

  python experiments/print_anomaly.py --config=experiments/configs/print.py --workdir=runs/print
  ... --config.data.root=/path/to/mvtec_layout_dataset     # real photos
"""
import os
import sys

import ml_collections

try:
  from experiments.configs import default
except ImportError:  # loaded by path (config_flags) from a script: the repository root is not
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()

  config.data = ml_collections.ConfigDict()
  config.data.name = 'print'
  config.data.root = ''  # MVTec AD layout; empty (and no normal_dir): generated surfaces
  config.data.normal_dir = ''  # free folders (anomalib's Folder): good images ...
  config.data.abnormal_dir = ''  # ... defect images (defect type = folder name) ...
  config.data.mask_dir = ''  # ... and their masks, matched by file stem
  config.data.normal_test_fraction = 0.2  # free folders: good images held out for testing
  config.data.seed = 0
  config.data.channels = 1  # 1 or 3; colour images are converted (and it is logged)
  config.data.image_size = 224  # model input; images are fitted to it (0: keep their size)
  config.data.resize_mode = 'resize'  # resize | center_crop
  # >0: every image resampled by the factor that brings the training images' texture period
  # down to at most this many px (never up; vae_qc.data.texture); 0: off
  config.data.max_period = 0.0
  config.data.on_bad_image = 'error'  # error (list them all) | skip (and count them)
  config.data.tile_size = 0  # >0: train and score on overlapping tiles of this size
  config.data.tile_stride = 0  # 0: tile_size // 2
  config.data.tile_aggregate = 'max'  # max | mean | topk: tile scores -> image score
  config.data.tile_topk = 3
  config.data.patch_size = 0  # >0: train on random patches of this size, drawn every step
  # ... each mirrored / turned at random by the symmetries the good surface has:
  # none | hflip | vflip | flips | dihedral (vae_qc.data.tiling.AUGMENTS)
  config.data.augment = 'none'
  # ... and zoomed by a random factor in [1/zoom, zoom] (1: none; vae_qc.data.tiling)
  config.data.zoom = 1.0
  # further patch models, ((patch_size, tile_stride), ...), trained beside the main one; each
  # map is the mean of theirs and its (vae_qc.scales)
  config.data.scales = ()
  config.data.generated_dir = 'data/generated'
  config.data.generate = ml_collections.ConfigDict()
  config.data.generate.size = 224
  config.data.generate.n_train = 400
  config.data.generate.n_test_good = 60
  config.data.generate.n_test_defect = 15
  config.data.generate.seed = 0
  config.data.generate.channels = 1

  config.model.blocks = (16, 32, 64, 128)
  config.model.fc = 128
  config.model.latent = 64

  config.train.epochs = 200
  config.train.batch_size = 32
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 200

  config.eval.scores = ('neg_elbo', 'recon_error', 'kl')
  config.eval.chunk_size = 8
  config.eval.batch_size = 16
  config.eval.num_plot_images = 4
  # Decision threshold (default): the 99th percentile of scores of good images held out of
  # training.
  return config
