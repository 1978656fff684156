"""Reading compiled HLO text: what runs per loop iteration, and what gets copied there.

Performance properties that no timing can pin down reliably on a shared machine (a buffer that
is updated in place, a kernel that is really called) are visible in the compiled program.
"""
from __future__ import annotations

import re


def while_body_lines(hlo_text: str) -> list[str]:
  """The instructions of every while loop's body computation in compiled HLO text."""
  bodies = set(re.findall(r"body=(%[\w.\-]+)", hlo_text))
  lines, current = [], None
  for line in hlo_text.splitlines():
    header = re.match(r"(?:ENTRY )?(%[\w.\-]+) ", line)
    if header and not line.startswith(" "):
      current = header.group(1)
    elif current in bodies:
      lines.append(line)
  return lines


def copies_of(lines: list[str], dtype: str, shape: tuple[int, ...]) -> list[str]:
  """The `copy` instructions among `lines` whose result is a `dtype[shape]` array."""
  array = re.escape(f"{dtype}[{','.join(map(str, shape))}]")
  return [ln for ln in lines if re.search(array + r"\{[^}]*\} copy\(", ln)]


def custom_calls_named(lines: list[str], pattern: str) -> list[str]:
  """The `custom-call` instructions among `lines` that mention `pattern` (a regex): a Pallas
  kernel's call carries its name in the instruction name (Mosaic) or its metadata (Triton)."""
  return [ln for ln in lines if " custom-call(" in ln and re.search(pattern, ln)]
