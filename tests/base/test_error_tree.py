"""The exception taxonomy is data you can read in one place: the tree drawn in
``p2ppool.errors``' docstring is the real class hierarchy, and every class in the module
is in it (issue 14)."""

from __future__ import annotations

import inspect
import re
from typing import Dict, List, Tuple

import p2ppool
from p2ppool import errors

NODE = re.compile(r"^(?P<indent>[ │]*)(?:[├└]── )?(?P<name>[A-Z]\w+)(?:\((?P<bases>[^)]*)\))?")


def drawn_tree(doc: str) -> Dict[str, Tuple[str | None, List[str]]]:
    """name -> (parent in the drawing, explicit bases) for each node of the tree."""
    lines = doc.split("::", 1)[1].split("\n\n")[1].splitlines()
    tree: Dict[str, Tuple[str | None, List[str]]] = {}
    stack: List[Tuple[int, str]] = []
    for line in lines:
        stripped = line[4:]  # the literal block's indentation
        match = NODE.match(stripped)
        if match is None or ("── " not in stripped and stack):
            continue  # a continuation line of a description
        depth = len(match.group("indent")) // 4 + (1 if "── " in stripped else 0)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else None
        bases = [b.strip().rpartition(".")[2] for b in (match.group("bases") or "").split(",")
                 if b.strip()]
        tree[match.group("name")] = (parent, bases)
        stack.append((depth, match.group("name")))
    return tree


def test_the_drawn_tree_is_the_class_hierarchy() -> None:
    tree = drawn_tree(errors.__doc__ or "")
    assert tree["P2PPoolError"] == (None, ["Exception"])
    for name, (parent, bases) in tree.items():
        cls = getattr(errors, name)
        real = [base.__name__ for base in cls.__bases__]
        if parent is not None:
            assert real[0] == parent, (name, real, parent)
        if bases:
            assert real == bases, (name, real, bases)


def test_every_p2ppool_exception_is_drawn() -> None:
    tree = drawn_tree(errors.__doc__ or "")
    classes = {name for name, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, errors.P2PPoolError)}
    assert classes == set(tree)
    assert all(getattr(p2ppool, name) is getattr(errors, name) for name in classes)


def test_the_parser_reads_a_wrong_drawing_as_wrong() -> None:
    doc = "x::\n\n    P2PPoolError(Exception)\n    └── BoardError(P2PPoolError)\n" \
          "        └── ProtocolError                  misfiled\n\nrest"
    assert drawn_tree(doc)["ProtocolError"] == ("BoardError", [])
    assert errors.ProtocolError.__bases__[0].__name__ != "BoardError"
