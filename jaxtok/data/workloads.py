"""Seeded speculative-decoding workloads built in the repo (issue 9 §4), as text requests.

* ``code``: the opening lines of held-out Python standard-library functions, to continue.
* ``agentic``: a repetitive multi-request workload - templated SQL-agent requests, two worked
  examples each, answered with one JSON tool call - where earlier responses predict later ones
  (SuffixDecoding's case).
* ``chat``: short English questions.

``chat`` and ``agentic`` are chat messages (rendered with the model's chat template by
``render``); ``code`` is raw text. Each request is a pure function of (workload, seed, index).
"""
from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import numpy as np

from jaxtok.config import require

WORKLOADS = ("code", "agentic", "chat")

# Modules read for held-out functions (pure-Python files present in every CPython install).
_CODE_FILES = ("textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "calendar.py", "string.py",
               "bisect.py", "heapq.py", "difflib.py", "netrc.py", "quopri.py", "base64.py")

_TABLES = (("orders", ("id", "customer_id", "total", "created_at", "status")),
           ("customers", ("id", "name", "email", "country", "signup_date")),
           ("products", ("id", "name", "price", "category", "stock")),
           ("payments", ("id", "order_id", "amount", "method", "paid_at")),
           ("shipments", ("id", "order_id", "carrier", "shipped_at", "delivered_at")))
# (request, the SQL that answers it)
_ASKS = (("List the {c1} and {c2} of all {t} where {c3} is greater than {n}.",
          "SELECT {c1}, {c2} FROM {t} WHERE {c3} > {n};"),
         ("Count the {t} grouped by {c2}.", "SELECT {c2}, COUNT(*) FROM {t} GROUP BY {c2};"),
         ("Show the 5 most recent {t} ordered by {c3}.",
          "SELECT * FROM {t} ORDER BY {c3} DESC LIMIT 5;"),
         ("Find the {t} whose {c1} equals {n}.", "SELECT * FROM {t} WHERE {c1} = {n};"),
         ("What is the average {c3} of {t} per {c2}?",
          "SELECT {c2}, AVG({c3}) FROM {t} GROUP BY {c2};"))
_SHOTS = 2  # worked examples before each request (a 135M model needs them to keep the format)
_SYSTEM = ("You are a SQL agent. Reply with exactly one JSON tool call of the form "
           '{"tool": "run_sql", "arguments": {"query": "<SQL>"}} and nothing else.')
_CHAT = ("What is the capital of France?", "Give me three tips for sleeping better.",
         "Explain what a hash table is in two sentences.", "How do plants make food?",
         "Write a haiku about autumn.", "Why is the sky blue?",
         "What should I pack for a weekend hiking trip?", "Summarise the plot of Cinderella.")


def _functions(max_lines: int = 40) -> list[str]:
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  out = []
  for name in _CODE_FILES:
    path = stdlib / name
    if not path.is_file():
      continue
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.FunctionDef) and 8 <= node.end_lineno - node.lineno <= max_lines:
        out.append("\n".join(lines[node.lineno - 1:node.end_lineno]))
  return out


def requests(workload: str, n: int, seed: int = 0, *, code_lines: int = 8):
  """``n`` requests of ``workload``: strings (code) or chat message lists (agentic, chat)."""
  require(workload in WORKLOADS, "workload", f"one of {WORKLOADS}", workload)
  require(n >= 1, "n", ">= 1", n)
  rng = np.random.default_rng([seed, WORKLOADS.index(workload)])
  if workload == "code":
    funcs = _functions()
    pick = rng.choice(len(funcs), size=min(n, len(funcs)), replace=False)
    return ["\n".join(funcs[i].splitlines()[:code_lines]) + "\n" for i in pick]
  if workload == "chat":
    pick = rng.choice(len(_CHAT), size=min(n, len(_CHAT)), replace=False)
    return [[{"role": "user", "content": _CHAT[i]}] for i in pick]
  out = []
  for _ in range(n):
    msgs = [{"role": "system", "content": _SYSTEM}]
    for shot in range(_SHOTS + 1):
      user, sql = _sql_request(rng)
      msgs.append({"role": "user", "content": user})
      if shot < _SHOTS:
        call = '{"tool": "run_sql", "arguments": {"query": "' + sql + '"}}'
        msgs.append({"role": "assistant", "content": call})
    out.append(msgs)
  return out


def _sql_request(rng) -> tuple[str, str]:
  t, cols = _TABLES[rng.integers(len(_TABLES))]
  c1, c2, c3 = (cols[i] for i in rng.choice(len(cols), 3, replace=False))
  ask, sql = _ASKS[rng.integers(len(_ASKS))]
  f = dict(t=t, c1=c1, c2=c2, c3=c3, n=int(rng.integers(1, 500)))
  return f"Table {t}({', '.join(cols)}). {ask.format(**f)}", sql.format(**f)


def render(request, tokenizer=None) -> list[int]:
  """Token ids of a request: the model's tokenizer (chat template for message lists), or UTF-8
  bytes without one (byte-level toy models)."""
  if tokenizer is None:
    text = request if isinstance(request, str) else "\n".join(
        f"{m['role']}: {m['content']}" for m in request) + "\nassistant: "
    return list(text.encode("utf-8"))
  text = request if isinstance(request, str) else tokenizer.apply_chat_template(request)
  return tokenizer.encode(text)
