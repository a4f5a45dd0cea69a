"""One line of text out of any string: what the project writes to a terminal or a log.

Text that comes from outside (a task key read from a spool file, an exception's message built from
request data, a task name, what a stats server sent) may hold line breaks and escape sequences: a
forged log record, a terminal's title changed, its screen cleared. :func:`escape` writes every
character that is not printable as a Python escape (``\\n``, ``\\x1b``, ``\\u2028``), and keeps the
rest as it is, so readable text (accents, other scripts) stays readable. It is used where a line
is written (the command's output, the failure log record, ``top``), never on the offload path.
"""

from __future__ import annotations

__all__ = ["escape"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: object) -> str:
    """``text`` (``str()`` of it) on one line: non-printable characters (controls, ESC, line and
    paragraph separators, bidirectional overrides, spaces other than ``' '``) as escapes.

    :param text: What to write; bytes are decoded as UTF-8, with replacement characters.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)
