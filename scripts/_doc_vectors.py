"""What the vector scripts share: a hex block, swapping a generated section between its markers
in a document, and the command line (print the section, or ``--write`` it into the document).

Used by scripts/protocol_vectors.py, offline_vectors.py and interop_vectors.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def hex_block(data: bytes, per_line: int = 16) -> str:
    lines = [data[i : i + per_line].hex(" ") for i in range(0, len(data), per_line)]
    return "```\n" + "\n".join(lines) + "\n```"


def map_text(obj: Any) -> str:
    """A decoded MessagePack value as the docs show it: bin(hex), true/false, "text"."""
    if isinstance(obj, bytes):
        return f"bin({obj.hex()})"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{map_text(k)}: {map_text(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(map_text(v) for v in obj) + "]"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, str):
        return f'"{obj}"'
    return str(obj)


def replace_section(doc: str, section: str, begin: str, end: str) -> str:
    """``doc`` with the text from ``begin`` through ``end`` (and its newline) replaced by
    ``section``; appended at the end when the document has no such section yet."""
    if begin not in doc:
        return doc.rstrip("\n") + "\n\n" + section
    start = doc.index(begin)
    stop = doc.index(end, start) + len(end) + 1
    return doc[:start] + section + doc[stop:]


def main(argv: list[str] | None, *, description: str, doc: Path, render: Callable[[], str],
         begin: str, end: str) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--write", action="store_true", help=f"replace the section in {doc}")
    args = parser.parse_args(argv)
    section = render()
    if args.write:
        doc.write_text(replace_section(doc.read_text(encoding="utf-8"), section, begin, end),
                       encoding="utf-8")
    else:
        sys.stdout.write(section)
    return 0
