"""Reconstruction by inpainting: the encoder never sees the pixels that it is scored on.

A patch VAE that sees a whole patch redraws what it sees, a defect included when the defect is
small or smooth (a slightly lifted corner, a smudge): its residual there stays low. With
``config.model.inpaint = g`` (cells per patch side; 0: off) the patch is cut into g×g cells
and the cells fall into four groups by the parity of their row and column, so the cells of one
group are never neighbours. In training the encoder's input hides one random group per
example; the likelihood is still that of the whole clean patch, so the objective is an ELBO,
with q(z | visible part) as the variational family. In scoring each group is hidden in turn
and every pixel takes its maps from the pass that hid it:
−E_q(z|x without its cell) log p(x_ij | z), the likelihood of the pixel under codes inferred
from the surrounding cells (in the spirit of Zavrtanik et al., "Reconstruction by inpainting
for visual anomaly detection", Pattern Recognition 2021). A map costs four passes.

A hidden pixel is set to the mean of the visible pixels of its image and channel.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vae_qc.errors import ConfigError

GROUPS = 4


def check(grid: int, image_shape, arch: str = 'global') -> None:
  """ConfigError unless ``grid`` (config.model.inpaint) fits patches of ``image_shape``."""
  if grid == 0:
    return
  h, w = image_shape[:2]
  if arch != 'global':
    raise ConfigError("config.model.inpaint needs config.model.arch='global' (a patch model); "
                      'set config.model.inpaint=0 for a spatial model.')
  if grid < 2 or h % grid or w % grid:
    raise ConfigError(f'config.model.inpaint={grid} must be 0 (off) or a number of cells per '
                      f'side, at least 2, that divides the patch size {h}x{w}.')


def cell_groups(height: int, width: int, grid: int) -> np.ndarray:
  """[H, W] int32: the group (0–3) of each pixel's cell, 2·(cell row mod 2) + cell col mod 2."""
  rows = (np.arange(height) * grid // height) % 2
  cols = (np.arange(width) * grid // width) % 2
  return (2 * rows[:, None] + cols[None, :]).astype(np.int32)


def hide(x: jax.Array, hidden: jax.Array) -> jax.Array:
  """x [B, H, W, C] with the pixels of ``hidden`` [B, H, W] (or [H, W]) bool set to the mean
  of the visible pixels of the same image and channel."""
  hidden = jnp.broadcast_to(hidden, x.shape[:3])[..., None]
  visible = (~hidden).astype(x.dtype)
  mean = jnp.sum(x * visible, axis=(1, 2), keepdims=True) / jnp.maximum(
      jnp.sum(visible, axis=(1, 2), keepdims=True), 1.0)
  return jnp.where(hidden, mean, x)


def random_hidden(key: jax.Array, batch: int, height: int, width: int, grid: int) -> jax.Array:
  """[B, H, W] bool: one group, drawn uniformly per example, hidden."""
  groups = jnp.asarray(cell_groups(height, width, grid))
  chosen = jax.random.randint(key, (batch, 1, 1), 0, GROUPS)
  return groups[None] == chosen


def combine(per_group: list[dict[str, jax.Array]], groups: jax.Array) -> dict[str, jax.Array]:
  """One map per name from the four passes: each pixel [.., H, W, ...] from the pass that hid
  it. ``per_group[g]``: {name: [B, H, W] or [B, H, W, C]}; ``groups`` [H, W]:
  :func:`cell_groups`."""
  out = {}
  for name in per_group[0]:
    value = per_group[0][name]
    for g in range(1, GROUPS):
      mask = (groups == g).reshape((1,) + groups.shape + (1,) * (value.ndim - 3))
      value = jnp.where(mask, per_group[g][name], value)
    out[name] = value
  return out
