#!/usr/bin/env python3
"""Finds import circles between the files of a Rust crate.

Why: issue 13's rule is "no import circle of more than two files in broker/src" — a file
that can reach everything cannot be tested alone. Every `crate::a::b` path (in `use` lines
and inline) and every `super::` path is resolved to the file that defines the module it
names; the strongly connected components of that graph are the circles.

Usage: scripts/import-circles.py [SRC_DIR] [--max N]   (defaults: broker/src, 2)
Exit status 1 when a circle has more than N files.
"""
import re
import sys
from pathlib import Path


def module_of(path: Path, root: Path) -> tuple[str, ...]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)


def expand_use(body: str) -> list[str]:
    """Expands `a::{b, c::{d}}` into full paths (brace groups)."""
    body = body.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", body, flags=re.DOTALL)
    if not m:
        return [body]
    prefix, inner = m.group(1), m.group(2)
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    out = []
    for item in items:
        item = item.strip()
        if item:
            out.extend(prefix + e for e in expand_use(item))
    return out


def main() -> int:
    args = sys.argv[1:]
    limit = 2
    if "--max" in args:
        i = args.index("--max")
        limit = int(args[i + 1])
        del args[i : i + 2]
    root = Path(args[0] if args else "broker/src")
    files = {module_of(p, root): p for p in root.rglob("*.rs")}
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {m: set() for m in files}

    def resolve(path: list[str]) -> tuple[str, ...] | None:
        for n in range(len(path), -1, -1):
            if tuple(path[:n]) in files:
                return tuple(path[:n])
        return None

    for mod, path in files.items():
        text = strip_comments(path.read_text())
        text = re.sub(r"(?s)#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text)
        paths: list[list[str]] = []
        for use in re.findall(r"\buse\s+([^;]+);", text):
            for full in expand_use(use):
                paths.append([p.strip() for p in full.split(" as ")[0].split("::")])
        for inline in re.findall(r"\b((?:crate|super|self)(?:::\w+)+)", text):
            paths.append(inline.split("::"))
        # A child module named bare (`admin::revoke`) from the file that declares it.
        for child in re.findall(r"\bmod\s+(\w+)\s*;", text):
            if re.search(rf"(?<![:\w]){child}::", text):
                paths.append(["self", child])
        for p in paths:
            if p[0] == "crate":
                target = resolve(p[1:])
            elif p[0] == "self":
                target = resolve(list(mod) + p[1:])
            elif p[0] == "super":
                # `super` of module a::b is a, whatever file defines a::b.
                base, rest = list(mod), p
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
                target = resolve(base + rest)
            else:
                continue
            if target is not None and target != mod and target != ():
                graph[mod].add(target)

    # Tarjan's strongly connected components.
    index: dict = {}
    low: dict = {}
    stack: list = []
    on_stack: set = set()
    sccs: list[list] = []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    bad = 0
    for comp in sorted(sccs, key=len, reverse=True):
        if len(comp) < 2:
            continue
        names = sorted("/".join(m) or "lib" for m in comp)
        mark = "TOO LARGE" if len(comp) > limit else "ok"
        print(f"{len(comp)} files ({mark}): {', '.join(names)}")
        if len(comp) > limit:
            bad += 1
    if bad:
        print(f"{bad} import circle(s) of more than {limit} files in {root}")
        return 1
    print(f"no import circle of more than {limit} files in {root} ({len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
