"""The wasm's code bytes by Rust module, from a build's names wasm
(build/index_bg.names.wasm: the same code as the deployed one, its function names kept).

    python3 bench/wasm_modules.py NEW.names.wasm [OLD.names.wasm] [--depth N]

Groups each function's body by the path in its (demangled) name: `byok_vault::<module>`
to `--depth` levels (2 by default), other crates by name; generics instantiated in the
vault's code are counted where their name puts them (`core::`, `alloc::`, `serde_json::`).
With OLD, prints the difference per group, largest growth first. Raw bytes of code, not
gzipped: a group's share of the gzipped size is about its share of the raw code.
"""
import re
import sys
from collections import defaultdict


def leb(b, i):
    r = s = 0
    while True:
        x = b[i]; i += 1
        r |= (x & 0x7f) << s; s += 7
        if x < 0x80:
            return r, i


def sections(b):
    i = 8
    while i < len(b):
        sid = b[i]; i += 1
        n, i = leb(b, i)
        yield sid, b[i:i + n]
        i += n


def demangle(name):
    m = re.match(r"_ZN(.*)E$", name)
    if not m:
        return name
    s, parts, i = m.group(1), [], 0
    while i < len(s) and s[i].isdigit():
        j = i
        while s[j].isdigit():
            j += 1
        n = int(s[i:j]); parts.append(s[j:j + n]); i = j + n
    if parts and re.match(r"h[0-9a-f]{16}$", parts[-1]):
        parts.pop()
    return "::".join(parts).replace("$LT$", "<").replace("$GT$", ">").replace("$u20$", " ").replace("..", "::")


def group(name, depth):
    n = demangle(name).lstrip("_<")
    n = re.sub(r"^(impl )?", "", n)
    path = re.split(r"::|<| as |\$|\s", n)
    path = [p for p in path if p]
    if not path:
        return "(unnamed)"
    if path[0] == "byok_vault":
        mods = [p for p in path[1:depth + 1] if re.match(r"^[a-z_][a-z0-9_]*$", p)]
        return "byok_vault::" + "::".join(mods[:depth]) if mods else "byok_vault"
    return path[0] if re.match(r"^[a-z_][a-z0-9_]*$", path[0]) else "(other)"


def sizes(path, depth):
    b = open(path, "rb").read()
    imported = 0
    bodies, names, data = [], {}, 0
    for sid, body in sections(b):
        if sid == 2:
            n, i = leb(body, 0)
            for _ in range(n):
                for _ in range(2):
                    ln, i = leb(body, i); i += ln
                kind = body[i]; i += 1
                if kind == 0:
                    _, i = leb(body, i); imported += 1
                elif kind == 1:
                    i += 1; flags, i = leb(body, i); _, i = leb(body, i)
                    if flags & 1: _, i = leb(body, i)
                elif kind == 2:
                    flags, i = leb(body, i); _, i = leb(body, i)
                    if flags & 1: _, i = leb(body, i)
                elif kind == 3:
                    i += 2
        elif sid == 10:
            n, i = leb(body, 0)
            for _ in range(n):
                ln, j = leb(body, i); bodies.append(j - i + ln); i = j + ln
        elif sid == 11:
            data += len(body)
        elif sid == 0:
            ln, i = leb(body, 0)
            if body[i:i + ln] != b"name":
                continue
            i += ln
            while i < len(body):
                sub = body[i]; i += 1
                sl, i = leb(body, i); end = i + sl
                if sub == 1:
                    n, j = leb(body, i)
                    for _ in range(n):
                        idx, j = leb(body, j); ln, j = leb(body, j)
                        names[idx] = body[j:j + ln].decode("utf-8", "replace"); j += ln
                i = end
    out = defaultdict(int)
    for k, size in enumerate(bodies):
        out[group(names.get(imported + k, "(unnamed)"), depth)] += size
    out["(data segments)"] = data
    return out


args = [a for a in sys.argv[1:] if not a.startswith("--")]
depth = int(sys.argv[sys.argv.index("--depth") + 1]) if "--depth" in sys.argv else 2
args = [a for a in args if a != str(depth)]
new = sizes(args[0], depth)
if len(args) > 1:
    old = sizes(args[1], depth)
    keys = sorted(set(new) | set(old), key=lambda k: -(new.get(k, 0) - old.get(k, 0)))
    print(f"{'group':48} {'old':>9} {'new':>9} {'delta':>8}")
    for k in keys:
        d = new.get(k, 0) - old.get(k, 0)
        if d:
            print(f"{k:48} {old.get(k, 0):9} {new.get(k, 0):9} {d:+8}")
    print(f"{'total':48} {sum(old.values()):9} {sum(new.values()):9} {sum(new.values()) - sum(old.values()):+8}")
else:
    for k, v in sorted(new.items(), key=lambda kv: -kv[1]):
        print(f"{k:48} {v:9}")
