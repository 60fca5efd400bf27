"""Rewrites a CUDA source for the emulated device (see cuda_emulation.h); line numbers are kept.

    python rewrite.py kernel.cu out.cpp

Two rewrites, nothing else changes:
  name<<<grid, block[, smem[, stream]]>>>(args)  ->  ::rmeeto_emu::makeLaunch("name", &name, grid, block...)(args)
  __shared__ T name[N]...;                        ->  auto& name = ::rmeeto_emu::sharedArray<T[N]...>("name@line");
  extern __shared__ T name[];                     ->  T* name = static_cast<T*>(::rmeeto_emu::dynamicShared());
Neither adds a line break, and a #line directive names the original file, so compiler messages and
the emulator's reports point at the .cu line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_LAUNCH = re.compile(r"<<<(.*?)>>>", re.S)
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(?P<type>[\w:<>, ]+?)\s+(?P<name>\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"__shared__\s+(?P<type>[\w:<>, ]+?)\s+(?P<name>\w+)\s*(?P<dims>(?:\[[^\]]+\]\s*)+);")


def _kernel_name_start(text: str, end: int) -> int:
    """Start of the kernel expression (identifier, `::`, balanced template arguments) ending at `end`."""
    i, depth = end, 0
    while i > 0:
        c = text[i - 1]
        if c == ">":
            depth += 1
        elif c == "<" and depth:
            depth -= 1
        elif not (depth or c.isalnum() or c in "_:"):
            break
        i -= 1
    return i


def _call_end(text: str, start: int) -> int:
    """Index just past the parenthesised argument list that opens at `start`."""
    if text[start] != "(":
        raise SystemExit(f"rewrite.py: expected '(' after a kernel's launch configuration, got {text[start:start + 20]!r}")
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    raise SystemExit("rewrite.py: unbalanced parentheses in a kernel launch")


def rewrite_launches(text: str) -> str:
    out, position = [], 0
    for match in _LAUNCH.finditer(text):
        name_start = _kernel_name_start(text, match.start())
        name = text[name_start : match.start()]
        if not name:
            raise SystemExit(f"rewrite.py: no kernel name before {match.group(0)!r}")
        out.append(text[position:name_start])
        out.append(f'::rmeeto_emu::makeLaunch("{" ".join(name.split())}", &{name}, {match.group(1)})')
        position = match.end()
    out.append(text[position:])
    return "".join(out)


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def rewrite_shared(text: str) -> str:
    text = _DYNAMIC_SHARED.sub(
        lambda m: f"{m['type']}* {m['name']} = static_cast<{m['type']}*>(::rmeeto_emu::dynamicShared());", text
    )
    return _STATIC_SHARED.sub(
        lambda m: f"auto& {m['name']} = ::rmeeto_emu::sharedArray<{m['type']}{''.join(m['dims'].split())}>"
        f'("{m["name"]}@{_line_of(text, m.start())}");',
        text,
    )


def rewrite(text: str, source: Path) -> str:
    rewritten = rewrite_shared(rewrite_launches(text))
    if rewritten.count("\n") != text.count("\n"):
        raise SystemExit(f"rewrite.py: rewriting {source} changed its line count")
    if "__shared__" in rewritten or "<<<" in rewritten:
        raise SystemExit(f"rewrite.py: {source} has a __shared__ or <<< form this script does not rewrite")
    return f'#line 1 "{source}"\n{rewritten}'


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        raise SystemExit("usage: rewrite.py KERNEL.cu OUT.cpp")
    source, target = Path(argv[1]).resolve(), Path(argv[2])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(rewrite(source.read_text(), source))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
