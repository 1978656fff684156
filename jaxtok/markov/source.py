"""k-th order Markov sources: exact statistics and jit-compiled samplers.

Source model of "Toward a Theory of Tokenization in LLMs" (Rajaraman, Jiao, Ramchandran;
arXiv 2404.08335, Sec. 2): a k-th order Markov process over a finite alphabet, with the binary
k-th order *switching* process as the running example,

    P(x_t = 1 | x_{t-k} = 0) = p,    P(x_t = 0 | x_{t-k} = 1) = q.

A source is stored as one transition table over contexts: context index
``s = sum_j x_{t-k+j} A^(k-1-j)`` (oldest symbol most significant) and row ``s`` holds
``P(x_t = . | s)``. Exact quantities (host numpy, outside jit):

- stationary context distribution mu (left eigenvector of the context chain), symbol marginal pi;
- entropy rate H_inf = sum_s mu(s) H(P(.|s));
- best character-unigram loss H(pi) (h(pi_1) for the switching source, pi_1 = p / (p + q));
- best unigram loss over the r-block tokenizer, per character, L(r) = H(X_1..X_r) / r, with
  H(X_1..X_r) = H(mu) + (r - k) H_inf for r >= k (chain rule, stationarity) and the entropy of
  mu's r-symbol marginal for r < k. For the switching source H(mu) = k h(pi_1), which gives the
  notes' L(r) = [k h(pi_1) + (r - k) H_inf] / r.

The LZW guarantee (``lzw_bound``) is documented on that function. Samplers are ``lax.scan`` loops
compiled with ``jax.jit``; nothing here calls JAX at import time.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxtok.config import require

MAX_CONTEXTS = 1 << 16  # A^k contexts are enumerated explicitly


def _entropy(p: np.ndarray) -> float:
  p = np.asarray(p, np.float64).ravel()
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


def binary_entropy(x: float) -> float:
  """h(x) in nats."""
  return _entropy(np.array([x, 1.0 - x]))


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovSource:
  """An ergodic k-th order Markov source over symbols 0..A-1.

  ``transition_SxA[s, a] = P(x_t = a | context s)`` with S = A^k contexts.
  """
  order: int
  alphabet_size: int
  transition_SxA: np.ndarray

  def __post_init__(self):
    require(isinstance(self.order, (int, np.integer)) and self.order >= 1, "k",
            "an integer order >= 1", self.order)
    require(self.alphabet_size >= 2, "alphabet_size", "at least 2 symbols", self.alphabet_size)
    n_ctx = self.alphabet_size ** self.order
    require(n_ctx <= MAX_CONTEXTS, "alphabet_size**k", f"<= {MAX_CONTEXTS} contexts", n_ctx)
    t = np.asarray(self.transition_SxA, np.float64)
    require(t.shape == (n_ctx, self.alphabet_size), "transition_SxA",
            f"shape (A^k, A) = ({n_ctx}, {self.alphabet_size})", t.shape)
    require(bool(np.all(t >= 0)) and np.allclose(t.sum(1), 1.0, atol=1e-9), "transition_SxA",
            "non-negative rows summing to 1", "a table violating it")
    object.__setattr__(self, "transition_SxA", t)
    require(_irreducible(self.context_chain_SxS()), "transition_SxA",
            "an irreducible (ergodic) context chain", "a chain with unreachable contexts")

  @property
  def n_contexts(self) -> int:
    return self.alphabet_size ** self.order

  def next_context(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
    return (s * self.alphabet_size + a) % self.n_contexts

  def context_chain_SxS(self) -> np.ndarray:
    """First-order chain on contexts: s -> (s A + a) mod A^k with probability P(a|s)."""
    s_n = self.n_contexts
    chain = np.zeros((s_n, s_n))
    s = np.arange(s_n)
    for a in range(self.alphabet_size):
      np.add.at(chain, (s, self.next_context(s, a)), self.transition_SxA[:, a])
    return chain

  def contexts_SxK(self) -> np.ndarray:
    """Symbols of each context, oldest first."""
    digits = [(np.arange(self.n_contexts) // self.alphabet_size ** (self.order - 1 - j))
              % self.alphabet_size for j in range(self.order)]
    return np.stack(digits, 1)


def _irreducible(chain_SxS: np.ndarray) -> bool:
  reach = chain_SxS > 0
  seen = np.zeros(len(reach), bool)
  seen[0] = True
  frontier = seen.copy()
  while frontier.any():
    new = reach[frontier].any(0) & ~seen
    seen |= new
    frontier = new
  back = np.zeros(len(reach), bool)
  back[0] = True
  frontier = back.copy()
  while frontier.any():
    new = reach[:, frontier].any(1) & ~back
    back |= new
    frontier = new
  return bool(seen.all() and back.all())


def switching_source(k: int, p: float, q: float) -> MarkovSource:
  """The binary k-th order switching process of arXiv 2404.08335 (Sec. 2)."""
  require(isinstance(k, (int, np.integer)) and k >= 1, "k", "an integer >= 1", k)
  require(0 < p < 1, "p", "a probability in (0, 1)", p)
  require(0 < q < 1, "q", "a probability in (0, 1)", q)
  oldest = (np.arange(2 ** k) >> (k - 1)) & 1  # x_{t-k} is the context's leading bit
  p1 = np.where(oldest == 0, p, 1.0 - q)
  return MarkovSource(int(k), 2, np.stack([1.0 - p1, p1], 1))


def random_source(k: int, alphabet_size: int, seed: int, concentration: float = 1.0,
                  floor: float = 0.02) -> MarkovSource:
  """A random k-th order source (Dirichlet rows mixed with ``floor`` of uniform: ergodic)."""
  require(0 < floor <= 1, "floor", "in (0, 1]", floor)
  rng = np.random.default_rng(seed)
  rows = rng.dirichlet(np.full(alphabet_size, concentration), alphabet_size ** k)
  return MarkovSource(int(k), int(alphabet_size), (1 - floor) * rows + floor / alphabet_size)


# ------------------------------------------------------------------------------------ exact math

def stationary_contexts(src: MarkovSource) -> Float[np.ndarray, "S"]:
  """mu over the A^k contexts: mu P = mu, sum mu = 1 (unique by ergodicity)."""
  chain = src.context_chain_SxS()
  s_n = src.n_contexts
  # Replace one balance equation by the normalisation; the system is non-singular when the chain
  # is irreducible.
  a = (chain.T - np.eye(s_n))
  a[-1] = 1.0
  b = np.zeros(s_n)
  b[-1] = 1.0
  mu = np.linalg.solve(a, b)
  return np.clip(mu, 0.0, None) / np.clip(mu, 0.0, None).sum()


def symbol_marginal(src: MarkovSource) -> Float[np.ndarray, "A"]:
  """pi(a) = P(x_t = a) under stationarity."""
  mu = stationary_contexts(src)
  return mu @ src.transition_SxA


def entropy_rate(src: MarkovSource) -> float:
  """H_inf = sum_s mu(s) H(P(. | s)) nats per symbol."""
  mu = stationary_contexts(src)
  rows = src.transition_SxA
  h_rows = -np.sum(np.where(rows > 0, rows * np.log(np.where(rows > 0, rows, 1.0)), 0.0), 1)
  return float(mu @ h_rows)


def unigram_loss(src: MarkovSource) -> float:
  """Best character-level unigram cross-entropy H(pi), nats per symbol."""
  return _entropy(symbol_marginal(src))


def block_entropy(src: MarkovSource, r: int) -> float:
  """H(X_1, ..., X_r) of the stationary process, nats."""
  require(isinstance(r, (int, np.integer)) and r >= 1, "r", "an integer block length >= 1", r)
  mu = stationary_contexts(src)
  k, a = src.order, src.alphabet_size
  if r >= k:
    return _entropy(mu) + (r - k) * entropy_rate(src)
  # The first r symbols of a stationary context are the r-block marginal.
  return _entropy(np.bincount(np.arange(src.n_contexts) // a ** (k - r), mu, a ** r))


def block_unigram_loss(src: MarkovSource, r: int) -> float:
  """L(r): best unigram over the A^r block tokens, per character = H(X_1..X_r) / r."""
  return block_entropy(src, r) / r


def min_transition_probability(src: MarkovSource) -> float:
  """delta = min over contexts and symbols of P(a | s) (the theorem's assumption)."""
  return float(src.transition_SxA.min())


def switching_stats(k: int, p: float, q: float) -> dict[str, float]:
  """Closed forms for the switching source: pi_1, h(pi_1), H_inf = (q h(p) + p h(q)) / (p+q)."""
  switching_source(k, p, q)  # validates
  pi1 = p / (p + q)
  return {"pi1": pi1, "unigram_loss": binary_entropy(pi1),
          "entropy_rate": (q * binary_entropy(p) + p * binary_entropy(q)) / (p + q),
          "delta": min(p, q, 1 - p, 1 - q)}


def lzw_bound(entropy_rate_value: float, delta: float, d: int,
              constant: float = 0.99) -> float:
  """Per-character loss guarantee for the LZW dictionary, H_inf / (1 - eps), or inf if vacuous.

  Form implemented: eps = log(1/delta) / (0.99 log d), for a source whose transition
  probabilities are all >= delta, where the best unigram model over the tokens of an LZW
  dictionary of size d has per-character cross-entropy at most H_inf / (1 - eps) (w.h.p. over the
  dictionary's training data, up to a vanishing token-count term). This is the LZW theorem of
  arXiv 2404.08335 Sec. 4 as recorded in our notes (core_papers.md Sec. 3); only the paper's
  abstract and section list could be retrieved here, so the constant 0.99 and the form of eps are
  the notes' reconstruction, not re-checked against the v2 body text.
  """
  require(0 < delta <= 0.5, "delta", "a minimum transition probability in (0, 0.5]", delta)
  require(d >= 2, "d", "a dictionary size >= 2", d)
  eps = math.log(1.0 / delta) / (constant * math.log(d))
  return entropy_rate_value / (1.0 - eps) if eps < 1 else math.inf


# --------------------------------------------------------------------------------------- samplers

@functools.partial(jax.jit, static_argnames=("n", "alphabet_size"))
def _sample_scan(key, log_transition_SxA, mu_S, n: int, alphabet_size: int):
  n_ctx = log_transition_SxA.shape[0]
  key0, key_steps = jax.random.split(key)
  s0 = jax.random.choice(key0, n_ctx, p=mu_S)

  def step(s, k_t):
    a = jax.random.categorical(k_t, log_transition_SxA[s])
    return (s * alphabet_size + a) % n_ctx, a

  _, x_N = jax.lax.scan(step, s0, jax.random.split(key_steps, n))
  return x_N.astype(jnp.int32)


def sample(key: Array, src: MarkovSource, n: int) -> Int[Array, "N"]:
  """n symbols of the stationary source (the first context is drawn from mu)."""
  require(isinstance(n, (int, np.integer)) and n >= 1, "n", "a positive length", n)
  with np.errstate(divide="ignore"):
    log_t = np.log(src.transition_SxA).astype(np.float32)
  return _sample_scan(key, jnp.asarray(log_t), jnp.asarray(stationary_contexts(src), jnp.float32),
                      int(n), src.alphabet_size)


@functools.partial(jax.jit, static_argnames=("n", "k"))
def _switching_scan(key, n: int, k: int, p, q):
  # The process is k interleaved first-order chains: scan over rounds, all k chains at once.
  rounds = -(-n // k)
  key0, key_steps = jax.random.split(key)
  x0_K = jax.random.bernoulli(key0, p / (p + q), (k,))

  def step(x_K, k_t):
    u_K = jax.random.uniform(k_t, (k,))
    flip_K = u_K < jnp.where(x_K, q, p)
    return x_K ^ flip_K, x_K

  _, x_RxK = jax.lax.scan(step, x0_K, jax.random.split(key_steps, rounds))
  return x_RxK.reshape(-1)[:n].astype(jnp.int32)


def sample_switching(key: Array, n: int, k: int, p: float, q: float) -> Int[Array, "N"]:
  """n symbols (0/1, int32) of the stationary k-th order switching source."""
  switching_source(k, p, q)  # validates k, p, q
  require(isinstance(n, (int, np.integer)) and n >= 1, "n", "a positive length", n)
  return _switching_scan(key, int(n), int(k), jnp.float32(p), jnp.float32(q))


def empirical_block_entropy(x: np.ndarray, r: int, alphabet_size: int) -> float:
  """Plug-in entropy of non-overlapping r-blocks (a simulation check of block_entropy)."""
  x = np.asarray(x, np.int64)
  m = len(x) // r
  codes = x[: m * r].reshape(m, r) @ (alphabet_size ** np.arange(r - 1, -1, -1))
  return _entropy(np.bincount(codes) / m)

