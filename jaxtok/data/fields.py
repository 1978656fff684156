"""Synthetic causal fields with exact likelihood: the grid source of the NAR experiment (He et
al., arXiv 2503.10696; core_papers.md §4a). One anti-diagonal's tokens are independent given the
previous one, so NAR's factorisation is exact; the ``same_diagonal`` control breaks it.
"""
from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int

from jaxtok.config import require
from jaxtok.data.sources import SeededSource


class CausalField:
  """A synthetic n x n field with exact likelihood (core_papers.md §4a): x[0,0] uniform, first
  row ~ A[left], first column ~ B[up], interior ~ C[up, left]; rows of every table are
  Dirichlet(alpha). Tokens of one anti-diagonal are independent given the previous one, so NAR's
  factorisation is exact. ``same_diagonal`` (the negative control): interior cells left of the
  last column also read x[i-1, j+1], which lies on their own diagonal.
  """

  def __init__(self, n: int, vocab: int, seed: int = 0, *, alpha: float = 0.3,
               same_diagonal: bool = False):
    require(n >= 2, "n", ">= 2", n)
    require(vocab >= 2, "vocab", ">= 2", vocab)
    require(alpha > 0, "alpha", "> 0", alpha)
    rng = np.random.default_rng([seed, 14])
    draw = lambda *lead: rng.dirichlet(np.full(vocab, alpha), size=lead)
    self.n, self.vocab, self.same_diagonal = n, vocab, same_diagonal
    self.a_VxV, self.b_VxV, self.c_VxVxV = draw(vocab), draw(vocab), draw(vocab, vocab)
    self.e_VxVxVxV = draw(vocab, vocab, vocab)

  def _reads_upright(self, i: int, j: int) -> bool:
    return self.same_diagonal and i > 0 and 0 < j < self.n - 1

  def _row(self, x_MxNxN, i, j, upright_MxV=None):
    """p(x[i, j] | parents) as [M, V]; ``upright_MxV`` replaces the one-hot of x[i-1, j+1] by a
    distribution over it (summed out)."""
    m = x_MxNxN.shape[0]
    if i == 0 and j == 0:
      return np.full((m, self.vocab), 1.0 / self.vocab)
    if i == 0:
      return self.a_VxV[x_MxNxN[:, 0, j - 1]]
    if j == 0:
      return self.b_VxV[x_MxNxN[:, i - 1, 0]]
    up, left = x_MxNxN[:, i - 1, j], x_MxNxN[:, i, j - 1]
    if not self._reads_upright(i, j):
      return self.c_VxVxV[up, left]
    table_MxVxV = self.e_VxVxVxV[up, left]  # [M, upright, x]
    if upright_MxV is None:
      return table_MxVxV[np.arange(m), x_MxNxN[:, i - 1, j + 1]]
    return np.einsum("mu,mux->mx", upright_MxV, table_MxVxV)

  def sample(self, rng: np.random.Generator, m: int) -> Int[np.ndarray, "M N"]:
    x = np.zeros((m, self.n, self.n), np.int32)
    for i in range(self.n):
      for j in range(self.n):
        cdf_MxV = np.cumsum(self._row(x, i, j), axis=1)
        u_Mx1 = rng.random((m, 1)) * cdf_MxV[:, -1:]
        x[:, i, j] = np.minimum((u_Mx1 > cdf_MxV).sum(1), self.vocab - 1)
    return x.reshape(m, -1)

  def log_prob(self, x_MxN: np.ndarray) -> Float[np.ndarray, "M"]:
    """Exact log-likelihood (nats) of each grid."""
    x = np.asarray(x_MxN).reshape(-1, self.n, self.n)
    m = np.arange(x.shape[0])
    return sum(np.log(self._row(x, i, j)[m, x[:, i, j]])
               for i in range(self.n) for j in range(self.n))

  def nar_log_prob(self, x_MxN: np.ndarray) -> Float[np.ndarray, "M"]:
    """sum_c log p(x_c | all tokens of earlier diagonals): the best log-likelihood any model
    that draws a diagonal's tokens independently given the earlier ones can reach (equal to
    ``log_prob`` without ``same_diagonal``). Along a diagonal (increasing i) the upright
    dependency is a chain, summed out by a forward recursion."""
    x = np.asarray(x_MxN).reshape(-1, self.n, self.n)
    m = np.arange(x.shape[0])
    total = np.zeros(x.shape[0])
    for d in range(2 * self.n - 1):
      q_MxV = None  # p(previous chain element | earlier diagonals)
      for i in range(max(0, d - self.n + 1), min(d, self.n - 1) + 1):
        j = d - i
        p_MxV = self._row(x, i, j, q_MxV if self._reads_upright(i, j) else None)
        total += np.log(p_MxV[m, x[:, i, j]])
        q_MxV = p_MxV
    return total


class FieldSource(SeededSource):
  """Grids of a ``CausalField`` (example i from seed (seed, i)) after one condition token."""

  def __init__(self, field: CausalField, seed: int, cond_id: int, length: int = 2**31 - 1):
    super().__init__(seed, length)
    self.field, self.cond_id = field, cond_id

  def generate(self, rng):
    return {"grid": self.field.sample(rng, 1)[0], "cond": np.array([self.cond_id], np.int32)}


class GridArrays:
  """A random-access source over fixed grids [M, N] and their condition tokens [M, C] (a real
  image set such as ``jaxtok.data.digits``): example i is {grid, cond} of row i."""

  def __init__(self, grids_MxN: np.ndarray, cond_MxC: np.ndarray):
    grids_MxN, cond_MxC = np.asarray(grids_MxN), np.asarray(cond_MxC)
    require(grids_MxN.ndim == 2 and len(grids_MxN) > 0, "grids_MxN", "a non-empty [M, N] array",
            grids_MxN.shape)
    require(cond_MxC.ndim == 2 and len(cond_MxC) == len(grids_MxN), "cond_MxC",
            f"[{len(grids_MxN)}, C]", cond_MxC.shape)
    self.grids_MxN, self.cond_MxC = grids_MxN, cond_MxC

  def __len__(self) -> int:
    return len(self.grids_MxN)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"grid": self.grids_MxN[index], "cond": self.cond_MxC[index]}
