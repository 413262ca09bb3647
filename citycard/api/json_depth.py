"""How deep a JSON text nests, judged before any parser sees it: Python's parser recurses (a
100,000-deep array is a RecursionError) and so does Postgres's (a "stack depth limit"). Every
step is a bytes method in C, so an 80 MiB upload is judged in tens of milliseconds, never a
Python loop over its bytes."""

import re

MAX_JSON_DEPTH = 32  # arrays and objects inside each other; a beneficiary list needs 2

_ESCAPED_BACKSLASH, _ESCAPED_QUOTE = b"\\\\", b'\\"'
# every byte but the structure a depth depends on: quotes and brackets
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_OPEN_CLOSE = bytes.maketrans(b"{}", b"[]")  # depth counts both kinds alike
_STRING = re.compile(rb'"[^"]*"')
_MAX_BRACKET_STRINGS = 100_000  # strings that hold a bracket: none in a beneficiary list


def _structure(data: bytes) -> bytes:
    """The brackets outside strings, braces written as brackets. Escapes go first (pairs of
    backslashes from the left, as a JSON reader pairs them, then escaped quotes), so every
    quote left opens or closes a string."""
    bare = data.replace(_ESCAPED_BACKSLASH, b"").replace(_ESCAPED_QUOTE, b"")
    marks = bare.translate(_OPEN_CLOSE, delete=_NOT_STRUCTURE)
    # an adjacent pair of quotes is an empty string or the gap between two strings: either
    # way nothing outside a string goes with it, and most strings hold no bracket at all
    marks = marks.replace(b'""', b"")
    if marks.count(b'"') > _MAX_BRACKET_STRINGS * 2:
        # a regex match costs ~0.3 us: past this many, brackets in strings count as structure
        # (may judge such a body too deep; never the other way round)
        return marks.replace(b'"', b"")
    if b'"' in marks:
        marks = _STRING.sub(b"", marks)
    return marks.replace(b'"', b"")  # an unclosed string: not JSON, the parser will say so


def too_deep(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """True if arrays and objects in ``data`` nest deeper than ``max_depth``. Text that is not
    JSON is judged as well as it can be: deep only if its brackets say so; the parser
    refuses it afterwards (brackets are never paired by kind here)."""
    marks = _structure(data)
    for _ in range(max_depth):  # each round removes the innermost pairs
        if b"[]" not in marks:
            break
        marks = marks.replace(b"[]", b"")
    else:
        if b"[]" in marks:
            return True  # a pair inside max_depth others
    # no pair left: closers, then openers never closed (not JSON); many of those nest deep too
    return marks.count(b"[") > max_depth
