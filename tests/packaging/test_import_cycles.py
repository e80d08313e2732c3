"""No import circle in interlace/ or operator/ (issue 27).

The graph is grimp's (what import-linter builds its contracts on): every `import` in the source,
function-level ones included, since a lazy import still closes a circle at run time. A circle is a
strongly connected component of more than one module; the check is pure Python over the static graph
(no module is imported), well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grimp


def circles(modules: Iterable[str], imported_by: Callable[[str], Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(imported_by(root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, todo = work[-1]
            if todo:
                w = todo.pop()
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, sorted(imported_by(w))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_finder_sees_a_planted_circle() -> None:
    """The check itself: a circle through a package's __init__ (the shape interlace once had:
    builtin -> easyvqa_vl -> data -> data.sources -> builtin) is found, a chain is not."""
    g = grimp.ImportGraph()
    for m in ("p.builtin", "p.easyvqa_vl", "p.data", "p.data.sources", "p.schema"):
        g.add_module(m)
    g.add_import(importer="p.builtin", imported="p.easyvqa_vl")
    g.add_import(importer="p.easyvqa_vl", imported="p.data")
    g.add_import(importer="p.data", imported="p.data.sources")
    g.add_import(importer="p.data.sources", imported="p.schema")
    assert circles(g.modules, g.find_modules_directly_imported_by) == []
    g.add_import(importer="p.data.sources", imported="p.builtin")
    assert circles(g.modules, g.find_modules_directly_imported_by) == [
        ["p.builtin", "p.data", "p.data.sources", "p.easyvqa_vl"]
    ]


def test_no_import_circle_in_the_library_or_the_operator() -> None:
    g = grimp.build_graph("interlace", "interlace_operator", cache_dir=None)
    assert "interlace.builtin" in g.modules and "interlace_operator.machine" in g.modules
    assert circles(g.modules, g.find_modules_directly_imported_by) == []
