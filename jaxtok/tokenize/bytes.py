"""A byte-level tokenizer (token = UTF-8 byte, vocabulary 256) with the pretrained tokenizer's
interface (``encode``, ``decode``, ``id_to_token``, ``apply_chat_template``), so tasks written
for a pretrained model (the passkey test, ``jaxtok.data.passkey``) also run on the random byte
model ``random-tiny`` in smoke runs."""
from __future__ import annotations

from collections.abc import Sequence


class ByteTokenizer:
  vocab_size = 256

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    """UTF-8 bytes of ``text`` (unencodable characters replaced); no BOS exists."""
    return list(text.encode("utf-8", "replace"))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(i) % 256 for i in ids).decode("utf-8", "replace")

  def id_to_token(self, i: int) -> str:
    return chr(int(i))

  def apply_chat_template(self, messages: Sequence[dict[str, str]], *,
                          add_generation_prompt: bool = True) -> str:
    """``<role>content</role>`` per message, then ``<assistant>`` (a stand-in template)."""
    for i, m in enumerate(messages):
      if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise ValueError(f"messages[{i}]: expected a dict with 'role' and 'content', got {m!r}")
    text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
    return text + ("<assistant>" if add_generation_prompt else "")
