"""Reading C++ sources as text for the contract checks (tests/contracts): no compiler or headers needed."""

from __future__ import annotations

import re


def function_body(source: str, name: str) -> str:
    """The body of function `name`'s definition (a signature without `;`, braces at column 0)."""
    match = re.search(rf"[\s:]{name}\([^;{{]*\n\{{\n(.*?)\n\}}\n", source, re.S)
    assert match, f"no definition of {name} found"
    return match.group(1)
