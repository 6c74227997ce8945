r"""The paper's VAE in eager PyTorch: the reference that experiments/benchmark.py races.

The model of ``vae_qc/models.py`` (Tonnaer et al., 2019), as PyTorch users would write it:

  encoder block(f): conv 3×3 (f) → ReLU → max-pool 2×2/2 → BatchNorm; then flatten →
  Linear(fc) → BN → ReLU → Linear(2·latent) = (mean, log σ) of q(z|x);
  decoder: Linear(fc) → BN → ReLU → Linear(h·w·f_last) → BN → ReLU → reshape; per block,
  filters reversed: nearest up-sample ×2 → conv 3×3 (f) → ReLU → BN; then conv 3×3 (C) →
  sigmoid, the mean of a Gaussian with fixed σ = 1/√2.

It times (a) one Adam step on the negative ELBO (one sample, batch-norm in training mode),
the work of ``vae_qc.train.train_step``, and (b) importance-sampled log p(x) with K samples
decoded ``--k_chunk`` at a time (eval mode, no gradients), the work of
``vae_qc.estimators.log_px``; then prints one JSON line: impl, arch, batch, k, threads,
params, train_img_per_s, is_img_per_s.

torch is an optional extra (``pip install -e .[bench]``, or a separate venv)::

  python experiments/torch_reference.py --arch=mnist --batch=128 --k=100 --channels_last
"""
import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
from torch import nn

ARCHS = {  # the same as experiments/benchmark.py's
    'mnist': dict(image_shape=(28, 28, 1), blocks=(32, 64), fc=64, latent=32),
    'print': dict(image_shape=(224, 224, 1), blocks=(16, 32, 64, 128), fc=128, latent=64),
}
LOG_SIGMA = math.log(1.0 / math.sqrt(2.0))  # likelihoods.PAPER_SIGMA
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class VAE(nn.Module):
  """x [B, C, H, W] -> (mean, log σ) [B, L]; z [N, L] -> mean of p(x|z) [N, C, H, W]."""

  def __init__(self, image_shape, blocks, fc, latent):
    super().__init__()
    height, width, channels = image_shape
    self.side = (height // 2 ** len(blocks), width // 2 ** len(blocks))
    self.last = blocks[-1]
    flat = self.side[0] * self.side[1] * self.last
    layers, c = [], channels
    for f in blocks:
      layers += [nn.Conv2d(c, f, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(f)]
      c = f
    layers += [nn.Flatten(), nn.Linear(flat, fc), nn.BatchNorm1d(fc), nn.ReLU(),
               nn.Linear(fc, 2 * latent)]
    self.encoder = nn.Sequential(*layers)
    self.decoder_fc = nn.Sequential(
        nn.Linear(latent, fc), nn.BatchNorm1d(fc), nn.ReLU(), nn.Linear(fc, flat),
        nn.BatchNorm1d(flat), nn.ReLU())
    layers = []
    for f in reversed(blocks):
      layers += [nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(c, f, 3, padding=1),
                 nn.ReLU(), nn.BatchNorm2d(f)]
      c = f
    layers += [nn.Conv2d(c, channels, 3, padding=1), nn.Sigmoid()]
    self.decoder = nn.Sequential(*layers)

  def encode(self, x):
    return self.encoder(x).chunk(2, dim=-1)

  def decode(self, z):
    return self.decoder(self.decoder_fc(z).view(-1, self.last, *self.side))


def log_likelihood(mean, x):
  """log N(x; mean, σ²) summed over pixels: [..., C, H, W] -> [...]."""
  d = x.shape[-3] * x.shape[-2] * x.shape[-1]
  sq = ((x - mean) ** 2).sum((-3, -2, -1))
  return -0.5 * sq * math.exp(-2.0 * LOG_SIGMA) - d * (LOG_SIGMA + HALF_LOG_2PI)


def log_normal(z, mean, log_scale):
  """log N(z; mean, exp(log_scale)²) summed over the last axis."""
  return (-0.5 * ((z - mean) * torch.exp(-log_scale)) ** 2 - log_scale - HALF_LOG_2PI).sum(-1)


def median_seconds(fn, runs: int, warmup: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--arch', choices=sorted(ARCHS), default='mnist')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--k', type=int, default=100, help='importance samples K')
  parser.add_argument('--k_chunk', type=int, default=0,
                      help='samples decoded at a time (0: all K)')
  parser.add_argument('--runs', type=int, default=10, help='timed training steps (median)')
  parser.add_argument('--threads', type=int, default=0, help='torch threads; 0: its default')
  parser.add_argument('--channels_last', action='store_true', help='NHWC memory format')
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  arch = ARCHS[args.arch]
  height, width, channels = arch['image_shape']
  model = VAE(**arch)
  x = torch.from_numpy(np.random.default_rng(0).random(
      (args.batch, channels, height, width), dtype=np.float32))
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

  def train_step():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    mean, log_scale = model.encode(x)
    z = mean + torch.exp(log_scale) * torch.randn_like(mean)
    kl = (0.5 * (torch.exp(2 * log_scale) + mean ** 2 - 1.0) - log_scale).sum(-1)
    loss = (kl - log_likelihood(model.decode(z), x)).mean()
    loss.backward()
    optimizer.step()

  @torch.inference_mode()
  def log_px():
    model.eval()
    mean, log_scale = model.encode(x)
    z = mean + torch.exp(log_scale) * torch.randn((args.k,) + tuple(mean.shape))  # [K, B, L]
    log_w = []
    for chunk in z.split(args.k_chunk or args.k, 0):
      loc = model.decode(chunk.reshape(-1, chunk.shape[-1]))
      loc = loc.reshape(chunk.shape[0], args.batch, channels, height, width)
      log_w.append(log_likelihood(loc, x[None]) + log_normal(chunk, 0.0, torch.zeros(()))
                   - log_normal(chunk, mean, log_scale))
    return (torch.logsumexp(torch.cat(log_w), 0) - math.log(args.k)).mean().item()

  train_s = median_seconds(train_step, args.runs, warmup=3)
  is_s = median_seconds(log_px, max(3, args.runs // 3), warmup=1)
  print(json.dumps({
      'impl': f'torch {torch.__version__}', 'arch': args.arch, 'batch': args.batch,
      'k': args.k, 'threads': torch.get_num_threads(),
      'params': sum(p.numel() for p in model.parameters()),
      'train_img_per_s': round(args.batch / train_s, 1),
      'is_img_per_s': round(args.batch / is_s, 2)}))


if __name__ == '__main__':
  main()
