"""app.dag: the creation order of a graph and the path of a cycle, without recursion."""

from __future__ import annotations

import itertools

import pytest

from app.dag import find_cycle, topological_order

N = 100_000


def assert_order(order: list[str], dependencies: dict[str, list[str]]) -> None:
    position = {node: index for index, node in enumerate(order)}
    for node, deps in dependencies.items():
        for dependency in deps:
            if dependency in position:
                assert position[dependency] < position[node], (dependency, node)


def assert_closed_cycle(cycle: list[str], dependencies: dict[str, list[str]]) -> None:
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1
    for node, dependency in itertools.pairwise(cycle):
        assert dependency in dependencies[node], (node, dependency)


# -- topological_order ---------------------------------------------------------------


def test_dependencies_come_first() -> None:
    dependencies = {"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []}

    order = topological_order(["d", "c", "b", "a"], dependencies)

    assert sorted(order) == ["a", "b", "c", "d"]
    assert_order(order, dependencies)
    assert order[0] == "a" and order[-1] == "d"


def test_independent_nodes_keep_the_given_order() -> None:
    nodes = ["z", "y", "x", "w"]

    assert topological_order(nodes, {}) == nodes


def test_ties_keep_the_given_order() -> None:
    order = topological_order(["c", "b", "a", "root"], {"c": ["root"], "b": ["root"]})

    assert order == ["a", "root", "c", "b"]


def test_dependencies_outside_the_nodes_are_ignored() -> None:
    order = topological_order(["b", "a"], {"b": ["a", "stored-1"], "a": ["stored-2"]})

    assert order == ["a", "b"]


def test_a_repeated_dependency_is_released_as_often_as_counted() -> None:
    assert topological_order(["b", "a"], {"b": ["a", "a"]}) == ["a", "b"]


def test_nodes_on_or_behind_a_cycle_are_left_out() -> None:
    dependencies = {"a": ["c"], "b": ["a"], "c": ["b"], "after": ["a"], "free": []}

    order = topological_order(["a", "b", "c", "after", "free"], dependencies)

    assert order == ["free"]


def test_a_chain_of_100000_is_ordered_without_recursion() -> None:
    nodes = [f"n{i}" for i in range(N)]
    dependencies = {nodes[i]: [nodes[i - 1]] for i in range(1, N)}

    order = topological_order(list(reversed(nodes)), dependencies)

    assert order == nodes


# -- find_cycle ----------------------------------------------------------------------


def test_no_cycle_is_none() -> None:
    assert find_cycle(["a", "b", "c"], {"c": ["b", "a"], "b": ["a"]}) is None
    assert find_cycle([], {}) is None


def test_a_cycle_is_named_in_order() -> None:
    dependencies = {"a": ["b"], "b": ["c"], "c": ["a"]}

    assert find_cycle(["a", "b", "c"], dependencies) == ["a", "b", "c", "a"]


def test_the_cycle_starts_at_its_earliest_node_wherever_the_search_enters() -> None:
    # The search starts at "entry", which only leads into the cycle, at "z".
    dependencies = {"entry": ["z"], "z": ["m"], "m": ["k"], "k": ["z"]}

    cycle = find_cycle(["entry", "k", "m", "z"], dependencies)

    assert cycle == ["k", "z", "m", "k"]
    assert_closed_cycle(cycle, dependencies)


def test_a_self_loop_is_a_cycle_of_one() -> None:
    assert find_cycle(["x", "a"], {"x": [], "a": ["a"]}) == ["a", "a"]


def test_a_cycle_behind_a_diamond_is_found() -> None:
    dependencies = {
        "top": ["left", "right"],
        "left": ["bottom"],
        "right": ["bottom"],
        "bottom": ["loop"],
        "loop": ["bottom"],
    }

    cycle = find_cycle(list(dependencies), dependencies)

    assert cycle == ["bottom", "loop", "bottom"]


def test_dependencies_outside_the_nodes_never_close_a_cycle() -> None:
    assert find_cycle(["a"], {"a": ["outside"], "outside": ["a"]}) is None


@pytest.mark.parametrize("reverse", [False, True], ids=["given-order", "reversed"])
def test_a_cycle_of_100000_is_found_without_recursion(reverse: bool) -> None:
    nodes = [f"n{i}" for i in range(N)]
    dependencies = {nodes[i]: [nodes[(i + 1) % N]] for i in range(N)}

    cycle = find_cycle(nodes[::-1] if reverse else nodes, dependencies)

    assert cycle is not None and len(cycle) == N + 1
    first = nodes[-1] if reverse else nodes[0]
    assert cycle[0] == first
    assert_closed_cycle(cycle, dependencies)


def test_a_100000_chain_has_no_cycle_and_is_searched_without_recursion() -> None:
    nodes = [f"n{i}" for i in range(N)]
    dependencies = {nodes[i]: [nodes[i - 1]] for i in range(1, N)}

    assert find_cycle(nodes[::-1], dependencies) is None
    assert len(topological_order(nodes, dependencies)) == N
