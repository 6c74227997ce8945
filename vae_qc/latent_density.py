"""A density over the latent space: a Gaussian mixture fitted on the encoder means μ(x) of the
training images. An image whose code lands where no training image's did is anomalous even
when the decoder reconstructs it well (a digit drawn like a normal one, a smooth patch on a
textured surface).

The mixture is fitted on the host with scikit-learn (EM, full covariances, k-means init,
seeded) and evaluated on the device from its arrays (``{'log_weights' [M], 'means' [M, L],
'precisions_cholesky' [M, L, L]}``), so scores stay inside jit. M = 1 is the Mahalanobis
distance of μ(x) to the training codes (plus a constant).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vae_qc.errors import ConfigError


def fit(means: np.ndarray, components: int, seed: int = 0, reg_covar: float = 1e-6
        ) -> dict[str, np.ndarray]:
  """Gaussian mixture of ``components`` full-covariance components on ``means`` [N, L].

  Returns the mixture's arrays (float32), for :func:`log_density`."""
  from sklearn import mixture  # pylint: disable=g-import-not-at-top  # slow; only when fitting
  means = np.asarray(means, np.float64).reshape(len(means), -1)
  if components < 1:
    raise ConfigError(f'config.eval.latent_components must be >= 1, got {components}.')
  if len(means) < 2 * components:
    raise ConfigError(f'cannot fit {components} mixture components on {len(means)} training '
                      'codes; lower config.eval.latent_components.')
  if not np.isfinite(means).all():
    raise ConfigError('the encoder gives non-finite means on training images; the model is '
                      'broken (retrain it).')
  gmm = mixture.GaussianMixture(components, covariance_type='full', reg_covar=reg_covar,
                                random_state=seed, max_iter=200, n_init=1).fit(means)
  return {'log_weights': np.log(gmm.weights_).astype(np.float32),
          'means': gmm.means_.astype(np.float32),
          'precisions_cholesky': gmm.precisions_cholesky_.astype(np.float32)}


def log_density(gmm, z: jax.Array) -> jax.Array:
  """log Σ_m w_m N(z; μ_m, Σ_m) [...] of codes z [..., L] under the mixture ``gmm``.

  With P_m the Cholesky factor of Σ_m⁻¹ (Σ_m⁻¹ = P_m P_mᵀ): log N = −½ L log 2π
  + Σ log diag P_m − ½ ‖(z − μ_m) P_m‖².
  """
  prec = jnp.asarray(gmm['precisions_cholesky'])  # [M, L, L]
  means = jnp.asarray(gmm['means'])  # [M, L]
  latent = means.shape[-1]
  y = jnp.einsum('...ml,mlk->...mk', z[..., None, :] - means, prec)  # [..., M, L]
  log_det = jnp.sum(jnp.log(jnp.diagonal(prec, axis1=-2, axis2=-1)), axis=-1)  # [M]
  log_comp = -0.5 * latent * math.log(2 * math.pi) + log_det - 0.5 * jnp.sum(y * y, axis=-1)
  return jax.nn.logsumexp(jnp.asarray(gmm['log_weights']) + log_comp, axis=-1)
