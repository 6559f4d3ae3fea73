#!/usr/bin/env python3
"""The module graph of src/ (not run by CI; `.ci/layers` is the check): files as nodes, their
`crate::`/`super::` references outside test modules as edges. Prints the import circles and the
imports that run up (or sideways across) the layers of src/lib.rs.

Usage: python3 .ci/modgraph.py [src] [--edges]
"""
import os, re, sys
from collections import defaultdict
args = [a for a in sys.argv[1:] if not a.startswith('--')]
root = args[0] if args else 'src'
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3]
            parts = rel.split(os.sep)
            if parts[-1] in ('mod', 'lib', 'main'):
                parts = parts[:-1]
            files['::'.join(parts)] = p
mods = set(files)
def strip_tests(src):
    # drop #[cfg(test)] mod tests { ... } blocks (rough: from '#[cfg(test)]\nmod' to end of file)
    m = re.search(r'#\[cfg\(test\)\]\s*mod \w+\s*\{', src)
    return src[:m.start()] if m else src
def expand(prefix, body):
    # expand a use tree body like "a, b::{c, d}, e::f"
    out = []
    depth = 0; cur = ''
    items = []
    for ch in body:
        if ch == '{': depth += 1
        if ch == '}': depth -= 1
        if ch == ',' and depth == 0:
            items.append(cur); cur = ''
        else:
            cur += ch
    items.append(cur)
    for it in items:
        it = it.strip()
        if not it: continue
        if '{' in it:
            head, rest = it.split('{', 1)
            out += expand(prefix + head.strip().rstrip(':').rstrip(':') + '::', rest.rsplit('}', 1)[0])
        else:
            out.append(prefix + it.split(' as ')[0].strip())
    return out
def resolve(me, path):
    segs = path.split('::')
    if segs[0] == 'crate' or segs[0] == 'nightshift':
        base = []
        segs = segs[1:]
    elif segs[0] == 'super':
        base = me.split('::')[:-1] if me else []
        # if file is a mod.rs, super is parent of the module
        segs = segs[1:]
        while segs and segs[0] == 'super':
            base = base[:-1]; segs = segs[1:]
    elif segs[0] == 'self':
        base = me.split('::') if me else []
        segs = segs[1:]
    else:
        return None
    best = None
    for i in range(len(segs) + 1):
        cand = '::'.join([s for s in base + segs[:i] if s])
        if cand in mods:
            best = cand
    return best
edges = defaultdict(set)
tests_only = '--with-tests' not in sys.argv
for m, p in files.items():
    src = open(p).read()
    if tests_only: src = strip_tests(src)
    src = re.sub(r'//.*', '', src)
    refs = []
    for um in re.finditer(r'\buse\s+((?:crate|super|self|nightshift)::[^;]*);', src):
        u = um.group(1)
        if '{' in u:
            head, rest = u.split('{', 1)
            refs += expand(head, rest.rsplit('}', 1)[0])
        else:
            refs.append(u.split(' as ')[0])
    refs += re.findall(r'\b((?:crate|super|nightshift)(?:::\w+)+)', src)
    for r in refs:
        t = resolve(m, r.strip())
        if t is not None and t != m and not m.startswith(t + '::') and t != '':
            edges[m].add(t)
# tarjan
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges[v]:
        if w not in idx:
            sc(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
for v in sorted(files):
    if v not in idx: sc(v)
big = [s for s in sccs if len(s) > 1]
print(f"files: {len(files)}; edges: {sum(len(e) for e in edges.values())}")
for s in big:
    print(f"cycle of {len(s)}: {' '.join(sorted(s))}")
if '--edges' in sys.argv:
    for m in sorted(edges):
        print(f"{m} -> {' '.join(sorted(edges[m]))}")
LAYER={'model':1,'policy':2,'config':3,'api':4,'store':4,'fake_api':4,'lanes':5,'daemon':6,'cli':7,'':8}
def layer(m): return LAYER.get(m.split('::')[0], 8)
ups=[]
for m in sorted(edges):
    for t in sorted(edges[m]):
        lm, lt = layer(m), layer(t)
        top_m, top_t = m.split('::')[0], t.split('::')[0]
        if lt > lm or (lt == lm and top_m != top_t and top_m and top_t):
            ups.append((m,t))
print(f"up or sideways imports: {len(ups)}")
for m,t in ups: print(f"  {m} -> {t}")
