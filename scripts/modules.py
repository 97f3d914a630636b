#!/usr/bin/env python3
"""The crate's module graph, read from its own source, held to its layers.

    python3 scripts/modules.py          # check: exit 1 on an import cycle or an upward import
    python3 scripts/modules.py --graph  # also print every module's imports, floor by floor

A module is a file under src/ (a folder's files each count; its mod.rs is the folder). An
import is any `crate::a::b` path or `super::x` in the code before its first `#[cfg(test)]`
(tests may reach anywhere); test-only files (tests.rs, tests/, testing/) are left out.

The floors, from the ground up: a module may import its own floor or one below, never one
above, and no two modules may import each other, directly or round a circle. The floor of
a module is its top-level folder's."""
import os
import re
import sys

FLOORS = [
    # The ground: plain data and the vocabulary every floor speaks.
    ("domain", ["domain", "small_sort", "json_read", "endpoint_guard"]),
    # Sealing keys, fingerprints, MACs.
    ("crypto", ["crypto"]),
    # The core's services: seams, providers, the operations and their rules.
    ("services", ["http", "limits", "redact", "probe", "providers", "auth", "audit", "notify",
                  "system_keys", "config", "error", "checks", "credentials", "usage", "import",
                  "rewrap", "revalidation", "metering", "budgets", "realtime"]),
    # Who asks for the operations: HTTP requests and background jobs.
    ("api/jobs", ["api", "jobs"]),
    # The Worker glue (wasm32 only).
    ("edge", ["edge"]),
]
FLOOR_OF = {top: i for i, (_, tops) in enumerate(FLOORS) for top in tops}
TEST_MARK = re.compile(r"^\s*#\[cfg\(test\)\]")


def module_of(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return "::".join(parts) or "crate"


def is_test_file(rel):
    parts = rel.split(os.sep)
    return "tests" in parts or "testing" in parts or parts[-1] in ("tests.rs", "testing.rs")


def code_of(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if TEST_MARK.match(line):
                break
            out.append(re.sub(r"//.*", "", line))
    return "".join(out)


def graph(src):
    mods = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                rel = os.path.relpath(os.path.join(root, n), src)
                if not is_test_file(rel):
                    mods[module_of(rel)] = os.path.join(root, n)
    known = set(mods)

    def resolve(path):
        """The longest known module a `a::b::c` path starts with."""
        parts = path.split("::")
        for i in range(len(parts), 0, -1):
            cand = "::".join(parts[:i])
            if cand in known:
                return cand
        return None

    edges = {m: set() for m in mods}
    for mod, path in mods.items():
        text = code_of(path)
        targets = [resolve(m.group(1)) for m in re.finditer(r"\bcrate::((?:[a-z_][a-z0-9_]*)(?:::[a-z_][a-z0-9_]*)*)", text)]
        parent = "::".join(mod.split("::")[:-1]) if "::" in mod else "crate"
        for m in re.finditer(r"\bsuper::((?:[a-z_][a-z0-9_]*)(?:::[a-z_][a-z0-9_]*)*)", text):
            targets.append(resolve(f"{parent}::{m.group(1)}" if parent != "crate" else m.group(1)) or parent)
        for m in re.finditer(r"\bsuper::\{([^}]*)\}", text):
            for name in re.findall(r"\b([a-z_][a-z0-9_]*)\b", m.group(1)):
                targets.append(resolve(f"{parent}::{name}" if parent != "crate" else name) or parent)
        for t in targets:
            # A module's own items, and a folder's use of its own files, are not imports.
            if t and t != mod and not t.startswith(mod + "::"):
                edges[mod].add(t)
    return edges


def cycles(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    edges = graph(src)
    problems = []
    for c in cycles(edges):
        problems.append("import cycle: " + " <-> ".join(c))
    for mod in sorted(edges):
        top = mod.split("::")[0]
        if top == "crate":
            continue
        if top not in FLOOR_OF:
            problems.append(f"{mod}: its top-level module {top} has no floor in scripts/modules.py")
            continue
        for t in sorted(edges[mod]):
            ttop = t.split("::")[0]
            if ttop in FLOOR_OF and FLOOR_OF[ttop] > FLOOR_OF[top]:
                problems.append(f"upward import: {mod} ({FLOORS[FLOOR_OF[top]][0]}) -> {t} ({FLOORS[FLOOR_OF[ttop]][0]})")
    if "--graph" in sys.argv:
        for i, (name, tops) in reversed(list(enumerate(FLOORS))):
            print(f"== {name}")
            for mod in sorted(m for m in edges if m.split("::")[0] in tops):
                print(f"  {mod} -> {', '.join(sorted(edges[mod])) or '-'}")
    for p in problems:
        print(p)
    n_edges = sum(len(v) for v in edges.values())
    print(f"modules: {len(edges)}, imports: {n_edges}, cycles: {sum(p.startswith('import cycle') for p in problems)}, "
          f"upward imports: {sum(p.startswith('upward') for p in problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
