"""scikit-learn's handwritten digits (8 x 8, grey levels 0..16; UCI optdigits) as token grids:
the small real image set of the NAR experiment (He et al., arXiv 2503.10696)."""
from __future__ import annotations

import numpy as np

from jaxtok.config import require


def digits(levels: int, size: int, seed: int):
  """(train grids [M, size^2], train labels [M], test grids, test labels): the digits quantised
  to ``levels`` grey levels, 8 x 8 or bilinear-upsampled 16 x 16; a seeded 6/7 : 1/7 split."""
  require(2 <= levels <= 17, "levels", "in [2, 17]", levels)
  require(size in (8, 16), "size", "8 or 16", size)
  from scipy.ndimage import zoom  # heavy optional imports: only when digits are asked for
  from sklearn.datasets import load_digits
  data = load_digits()
  img_Mx8x8 = data.images.astype(np.float64)  # values 0..16
  if size == 16:
    img_Mx8x8 = np.stack([np.clip(zoom(im, 2, order=1), 0, 16) for im in img_Mx8x8])
  q = np.minimum(np.floor(img_Mx8x8 * levels / 17.0), levels - 1).astype(np.int32)
  perm = np.random.default_rng([seed, 8]).permutation(len(q))
  n_test = len(q) // 7
  flat = q.reshape(len(q), -1)
  return (flat[perm[n_test:]], data.target[perm[n_test:]], flat[perm[:n_test]],
          data.target[perm[:n_test]])
