"""Hostile skops files for the trust-policy tests: each one tries to write a marker file when loaded.

Every payload is a real fitted LogisticRegression whose attribute dict gains one extra entry, a
skops node tree that reaches code execution through what skops will construct. The trees are
written by hand into the file's `schema.json` (skops refuses to *save* most of them), in the
format skops 0.16 reads. `PAYLOADS` maps a name to (builder, the type the refusal must name).
`Evil` below is a type that exists only in this test module.
"""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

Node = dict[str, Any]
_ids = itertools.count(10**12)


class Evil:
    """A type that exists only in a test module; building it from a file writes the marker."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["marker"]).write_text("skops payload ran: tests.server.skops_payloads.Evil")


def _n(loader: str, module: str, cls: str, **rest: Any) -> Node:
    return {"__class__": cls, "__module__": module, "__loader__": loader, **rest, "__id__": next(_ids)}


def s(value: Any) -> Node:
    return _n("JsonNode", "builtins", type(value).__name__, content=json.dumps(value), is_json=True)


def tup(*items: Node) -> Node:
    return _n("TupleNode", "builtins", "tuple", content=list(items))


def dct(**items: Node) -> Node:
    key_types = _n("ListNode", "builtins", "list", content=[_n("TypeNode", "builtins", "str") for _ in items])
    return _n("DictNode", "builtins", "dict", content=items, key_types=key_types)


def func(module: str, name: str) -> Node:
    return _n("FunctionNode", module, name)


def attr(module: str, name: str, member: str) -> Node:
    """`getattr(module.name, member)`: skops' MethodNode on a FunctionNode (e.g. numpy's `builtins.eval`)."""
    return _n("MethodNode", module, name, content={"obj": func(module, name), "func": member})


def call(module: str, name: str, *args: Node) -> Node:
    """`module.name(*args)` at load time: skops' ConstructorFromReduceNode."""
    return _n("ConstructorFromReduceNode", module, name, content=tup(*args))


def op(kind: str, *args: Node) -> Node:
    return _n("OperatorFuncNode", "operator", kind, attrs=tup(*args))


def partial(fn: Node, *args: Node, name: str | None = None) -> Node:
    namespace = s(None) if name is None else dct(__name__=s(name))
    return _n("PartialNode", "functools", "partial",
              content={"func": fn, "args": tup(*args), "kwds": dct(), "namespace": namespace})  # fmt: skip


def obj(module: str, cls: str, **attrs: Node) -> Node:
    return _n("ObjectNode", module, cls, content=dct(**attrs))


def apply(fn: Node, *args: Node) -> Node:
    """Call a constructed callable with constructed args at load: numpy.testing.assert_raises(E, fn, *args).

    The call happens first; the AssertionError that follows (nothing was raised) comes too late.
    """
    return call("numpy.testing", "assert_raises", _n("TypeNode", "numpy.exceptions", "AxisError"), fn, *args)


def ret(fn: Node, *args: Node) -> Node:
    """`fn(*args)` at load, returning its value: numpy.testing.assert_no_warnings (fn needs a `__name__`)."""
    return call("numpy.testing", "assert_no_warnings", fn, *args)


def _code(marker: Path, how: str) -> str:
    return f"import pathlib; pathlib.Path({str(marker)!r}).write_text({how!r})"


def _expr(marker: Path, how: str) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text({how!r})"


NUMPY_BUILTINS = ("numpy._core.numeric", "builtins")  # numpy's module attribute `builtins` IS the builtins module
PAYLOADS: dict[str, tuple[Callable[[Path], Node], str]] = {
    # the audit's payload: numpy.testing.runstring(code, {}) is exec(code, {})
    "numpy.testing.runstring": (lambda m: call("numpy.testing", "runstring", s(_code(m, "runstring")), dct()),
                                "numpy.testing.runstring"),
    # builtins.eval / exec reached through an attribute of a numpy module, called by numpy.testing.assert_raises
    "eval via numpy attribute": (lambda m: apply(attr(*NUMPY_BUILTINS, "eval"), s(_expr(m, "eval"))),
                                 "numpy._core.numeric.builtins"),
    "exec via numpy.ma attribute": (lambda m: apply(attr("numpy.ma.core", "builtins", "exec"), s(_code(m, "exec"))),
                                    "numpy.ma.core.builtins"),
    # a python script run by an sklearn test helper
    "sklearn test helper runs a script": (
        lambda m: call("sklearn.utils._testing", "assert_run_python_script_without_output",
                       s(_code(m, "sklearn helper")), s(".*"), s(60)),
        "sklearn.utils._testing.assert_run_python_script_without_output"),
    # operator.methodcaller / attrgetter chains
    "operator.methodcaller chain": (
        lambda m: apply(op("methodcaller", s("eval"), s(_expr(m, "methodcaller"))), func(*NUMPY_BUILTINS)),
        "operator.methodcaller"),
    "operator.attrgetter chain": (
        lambda m: apply(ret(partial(op("attrgetter", s("exec")), func(*NUMPY_BUILTINS), name="f")),
                        s(_code(m, "attrgetter"))),
        "operator.attrgetter"),
    "operator.methodcaller via numpy attribute": (
        lambda m: apply(ret(attr("numpy._core.numeric", "operator", "methodcaller"), s("eval"),
                              s(_expr(m, "numpy operator"))), func(*NUMPY_BUILTINS)),
        "numpy._core.numeric.operator"),
    # functools.partial
    "functools.partial": (lambda m: apply(partial(attr(*NUMPY_BUILTINS, "exec"), s(_code(m, "partial")))),
                          "functools.partial"),
    "functools.partial via numpy attribute": (
        lambda m: apply(ret(attr("numpy._core.numeric", "functools", "partial"), attr(*NUMPY_BUILTINS, "exec"),
                              s(_code(m, "numpy partial")))),
        "numpy._core.numeric.functools"),
    # a type that exists only in a test module (ours, and one of sklearn's own test helpers)
    "type from a test module": (lambda m: obj("tests.server.skops_payloads", "Evil", marker=s(str(m))),
                                "tests.server.skops_payloads.Evil"),
    "sklearn test-module type": (lambda m: obj("sklearn.utils._testing", "MinimalClassifier", marker=s(str(m))),
                                 "sklearn.utils._testing.MinimalClassifier"),
}  # fmt: skip


def write(path: Path, payload: Node) -> Path:
    """A real LogisticRegression saved with skops, plus `payload` as an extra attribute."""
    import skops.io as sio

    rng = np.random.default_rng(0)
    model = LogisticRegression().fit(rng.uniform(0, 10, (40, 4)), np.arange(40) % 2)
    clean = path.with_suffix(".clean")
    sio.dump(model, clean)
    with zipfile.ZipFile(clean) as source:
        members = {name: source.read(name) for name in source.namelist()}
    schema = json.loads(members["schema.json"])
    attrs = schema["content"]
    attrs["content"]["evil_"] = payload
    attrs["key_types"]["content"].append(_n("TypeNode", "builtins", "str"))
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    clean.unlink()
    return path
