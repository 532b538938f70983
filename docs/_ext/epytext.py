"""
Turn the epytext in the package's docstrings into reStructuredText for
autodoc: the fields C{@param}, C{@ivar}, C{@raise}, C{@return} and the
inline markup C{C{...}}, C{L{...}}, C{I{...}}, C{B{...}}.
"""

from __future__ import annotations

import re
from typing import Any

_FIELDS = {
    "param": "param",
    "type": "type",
    "ivar": "ivar",
    "cvar": "cvar",
    "var": "var",
    "raise": "raises",
    "raises": "raises",
    "return": "returns",
    "returns": "returns",
    "rtype": "rtype",
    "see": "seealso",
    "note": "note",
    "since": "since",
}
_FIELD = re.compile(r"^(\s*)@(\w+)(\s+[^:]+)?:(.*)$")
_MARKUP = re.compile(r"([CLIBU])\{")


def _inline(text: str) -> str:
    """
    Replace epytext inline markup, which may nest braces.
    """
    out: list[str] = []
    position = 0
    while True:
        match = _MARKUP.search(text, position)
        if match is None:
            out.append(text[position:])
            return "".join(out)
        out.append(text[position : match.start()])
        depth = 1
        index = match.end()
        while index < len(text) and depth:
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
            index += 1
        if depth:
            # Not closed on this line: leave it as it is.
            out.append(text[match.start() :])
            return "".join(out)
        inner = text[match.end() : index - 1]
        kind = match.group(1)
        if kind == "C":
            out.append(f"``{inner}``")
        elif kind == "L":
            out.append(f":py:obj:`{_inline(inner)}`")
        elif kind == "I":
            out.append(f"*{_inline(inner)}*")
        elif kind == "B":
            out.append(f"**{_inline(inner)}**")
        else:
            out.append(_inline(inner))
        position = index


def convert(lines: list[str]) -> list[str]:
    """
    The epytext C{lines} of one docstring, as reStructuredText.
    """
    result: list[str] = []
    inField = False
    for line in lines:
        match = _FIELD.match(line)
        if match is not None and match.group(2) in _FIELDS:
            indent, name, argument, rest = match.groups()
            field = _FIELDS[name]
            argument = (argument or "").strip()
            if result and result[-1].strip() and not inField:
                result.append("")
            head = f"{indent}:{field} {argument}:" if argument else f"{indent}:{field}:"
            result.append(f"{head}{rest}")
            inField = True
            continue
        if inField and line.strip() and not line.startswith((" ", "\t")):
            inField = False
        result.append(line)
    # Inline markup may run over several lines.
    return _inline("\n".join(result)).split("\n")


def _process(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    lines[:] = convert(lines)


def setup(app: Any) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "version": "1"}
