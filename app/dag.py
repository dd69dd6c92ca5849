"""Pure functions over dependency graphs: an order to create them in, and a cycle's path.

A graph is given as `nodes` (ids, in the order the client sent them) and `dependencies`
(each node's dependencies). Dependencies outside `nodes` are edges to the rest of the world
(tasks that already exist) and are ignored. Nothing here recurses: a chain of 100,000
tasks must not reach Python's recursion limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

WHITE, GREY, BLACK = 0, 1, 2


def topological_order(nodes: Sequence[str], dependencies: Mapping[str, Iterable[str]]) -> list[str]:
    """Return `nodes` with every node after its dependencies (Kahn's algorithm).

    Ties keep the given order. Nodes on a cycle, or behind one, are left out: the
    result is shorter than `nodes` exactly when the graph has a cycle.
    """
    waiting = dict.fromkeys(nodes, 0)
    dependents: dict[str, list[str]] = {}
    for node in nodes:
        # A repeated edge is counted, and later released, once per repeat.
        for dependency in dependencies.get(node, ()):
            if dependency in waiting:
                waiting[node] += 1
                if dependency in dependents:
                    dependents[dependency].append(node)
                else:
                    dependents[dependency] = [node]
    ready = deque(node for node, count in waiting.items() if count == 0)
    order: list[str] = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for dependent in dependents.get(node, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    return order


def find_cycle(nodes: Sequence[str], dependencies: Mapping[str, Iterable[str]]) -> list[str] | None:
    """Return one cycle as a path, each id depending on the next, e.g. [a, b, c, a].

    The path starts at its node that comes first in `nodes`, so the answer does not
    depend on where the search happened to enter the cycle. None when there is none.
    """
    members = set(nodes)
    colour = dict.fromkeys(nodes, WHITE)
    for root in nodes:
        if colour[root] != WHITE:
            continue
        # The grey path from `root`, each entry with what is left of its dependencies.
        path: list[str] = [root]
        pending = [iter(_inside(dependencies.get(root, ()), members))]
        at = {root: 0}
        colour[root] = GREY
        while path:
            step = next(pending[-1], None)
            if step is None:
                done = path.pop()
                colour[done] = BLACK
                del at[done]
                pending.pop()
            elif colour[step] == GREY:
                return _rotated(path[at[step] :], nodes)
            elif colour[step] == WHITE:
                colour[step] = GREY
                at[step] = len(path)
                path.append(step)
                pending.append(iter(_inside(dependencies.get(step, ()), members)))
    return None


def _inside(dependencies: Iterable[str], members: set[str]) -> list[str]:
    return [d for d in dict.fromkeys(dependencies) if d in members]


def _rotated(cycle: list[str], nodes: Sequence[str]) -> list[str]:
    """Return the closed path of `cycle`, starting at its earliest node in `nodes`."""
    on_cycle = set(cycle)
    first = next(node for node in nodes if node in on_cycle)
    start = cycle.index(first)
    ring = cycle[start:] + cycle[:start]
    return [*ring, ring[0]]
