"""The skops trust policy: which types a skops artifact may contain, checked before anything is built.

Owned here: the decision whether a skops file may be loaded at all. skops itself reports every
type, function and method in the file that is outside its own default trusted set (sklearn's public
estimators, numpy/scipy ufuncs, dtypes and arrays, primitive containers). Of those, the server
accepts only fully-qualified names that are either on the reviewed `PROJECT_TRUSTED_TYPES` list
below or listed by the operator in `MODELDEPLOY_TRUSTED_TYPES`; there is no prefix rule (a prefix
such as `numpy.` admits `numpy.testing.runstring`, which is `exec`). Everything else refuses the
artifact with one line naming the types, before skops imports or calls any of them.

Before that, the zip itself is bounded (`check_zip`): its members may not expand past
`MODELDEPLOY_MAX_ARTIFACT_BYTES`.

Also owned here: the structural check of decision trees (`check_trees`). skops does not trust
`sklearn.tree._tree.Tree` by default because sklearn indexes its node arrays without bounds
checks; the project trusts it only together with that check, run on the loaded object before any
prediction. Called by `runtime.load_runtime` (skops artifacts only).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from modeldeploy_server.errors import LoadRefused

# Reviewed: each is a plain data holder whose construction and use run no code taken from the file.
PROJECT_TRUSTED_TYPES: dict[str, str] = {
    "numpy.dtype": "the dtype of a stored array (SimpleImputer, KBinsDiscretizer); built from a dtype string",
    "sklearn.tree._tree.Tree": "node storage of every tree model; trusted only with `check_trees` after loading",
    "sklearn.utils._bunch.Bunch": "a dict with attribute access (VotingClassifier.named_estimators_)",
    "sklearn.calibration._CalibratedClassifier": "CalibratedClassifierCV's fitted (estimator, calibrators) pair",
    "sklearn.calibration._SigmoidCalibration": "CalibratedClassifierCV's fitted sigmoid (two floats)",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer": "MLP training state (arrays and floats)",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer": "MLP training state (arrays and floats)",
}
# Never accepted, even when listed in MODELDEPLOY_TRUSTED_TYPES: these run code or reach the system.
NEVER_TRUSTED_MODULES = ("builtins", "os", "posix", "nt", "subprocess", "sys", "importlib", "runpy", "pty",
                         "shutil", "socket", "ctypes", "pickle", "marshal", "code", "codeop", "operator",
                         "functools")  # fmt: skip
NEVER_TRUSTED = frozenset({"numpy.testing.runstring", "numpy.testing._private.utils.runstring"})
SAFE_BUILTINS = frozenset({"builtins.int", "builtins.float", "builtins.str", "builtins.bool", "builtins.bytes",
                           "builtins.complex", "builtins.slice"})  # fmt: skip
MAX_ZIP_MEMBERS = 100_000
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def operator_types(entries: Iterable[str]) -> frozenset[str]:
    """Validate `MODELDEPLOY_TRUSTED_TYPES`: exact dotted names only, never a prefix or a code runner."""
    accepted = set()
    for entry in entries:
        name = entry.strip()
        if not _DOTTED.fullmatch(name):
            raise LoadRefused(
                f"MODELDEPLOY_TRUSTED_TYPES entry {entry!r} is not a fully-qualified name like "
                "'package.module.Type' (prefixes and wildcards are not accepted)"
            )
        if name in NEVER_TRUSTED or (name.split(".", 1)[0] in NEVER_TRUSTED_MODULES and name not in SAFE_BUILTINS):
            raise LoadRefused(
                f"MODELDEPLOY_TRUSTED_TYPES entry {name!r} runs code or reaches the system; never trusted"
            )
        accepted.add(name)
    return frozenset(accepted)


def check_zip(path: Path, uri: str, max_bytes: int) -> None:
    """A skops file is a zip: refuse one that would expand past MODELDEPLOY_MAX_ARTIFACT_BYTES (a zip bomb).

    zipfile reads a member only up to its declared size, so the declared sizes bound what skops reads.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise LoadRefused(f"cannot read skops artifact {uri}: {type(exc).__name__}: {exc}") from exc
    expanded = sum(member.file_size for member in members)
    if expanded > max_bytes or len(members) > MAX_ZIP_MEMBERS:
        raise LoadRefused(
            f"skops artifact {uri} expands to {expanded} bytes in {len(members)} files, over "
            f"MODELDEPLOY_MAX_ARTIFACT_BYTES={max_bytes} (or {MAX_ZIP_MEMBERS} files)"
        )


def skops_trusted(path: Path, uri: str, extra: Iterable[str], max_bytes: int) -> list[str]:
    """The types to pass to `skops.io.load(trusted=...)`, or LoadRefused naming every type outside the policy."""
    import skops.io as sio

    check_zip(path, uri, max_bytes)
    allowed = set(PROJECT_TRUSTED_TYPES) | operator_types(extra)
    try:
        found = sio.get_untrusted_types(file=path)
    except Exception as exc:  # a file skops cannot even parse is refused like any unreadable artifact
        raise LoadRefused(f"cannot read skops artifact {uri}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    refused = sorted(t for t in found if t not in allowed)
    if refused:
        shown = refused if len(refused) <= 8 else [*refused[:8], f"... {len(refused) - 8} more"]
        raise LoadRefused(
            f"skops artifact {uri} contains untrusted types {shown}; "
            "list a type in MODELDEPLOY_TRUSTED_TYPES only if you have reviewed that it runs no code"
        )
    return sorted(found)


def _walk(root: Any, limit: int = 1_000_000) -> Iterable[Any]:
    """Every object reachable through containers and instance dicts (each once)."""
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.extend(vars(obj).values())


def check_tree(tree: Any, where: str, width: int | None) -> None:
    """Refuse a Tree whose node arrays would make sklearn read outside them.

    Every node's children are both -1 (a leaf) or both inside (node, node_count): a tree is built
    parent first, so this also rules out cycles. Every split feature indexes a column of the input.
    """
    count, capacity, n_features = int(tree.node_count), int(tree.capacity), int(tree.n_features)
    if not 0 < count <= capacity:
        raise LoadRefused(f"{where}: tree node_count {count} is outside [1, capacity {capacity}]")
    if width is not None and n_features != width:
        raise LoadRefused(f"{where}: tree has {n_features} features but its estimator has {width}")
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    feature = np.asarray(tree.feature)
    ids = np.arange(count)
    leaf = (left == -1) & (right == -1)
    inner = ~leaf
    ok_children = (left > ids) & (left < count) & (right > ids) & (right < count)
    bad = np.flatnonzero(inner & ~(ok_children & (feature >= 0) & (feature < n_features)))
    if len(bad):
        k = int(bad[0])
        raise LoadRefused(
            f"{where}: tree node {k} is malformed (children {int(left[k])}, {int(right[k])}, feature "
            f"{int(feature[k])}, {count} nodes, {n_features} features); sklearn would read out of bounds"
        )


def check_trees(model: Any, uri: str) -> int:
    """Run `check_tree` on every tree reachable from the loaded model; the number of trees checked."""
    from sklearn.tree._tree import Tree

    checked: set[int] = set()
    objects = list(_walk(model))
    for obj in objects:  # first the trees an estimator owns: their width is known
        tree = None if isinstance(obj, dict) else getattr(obj, "tree_", None)
        if isinstance(tree, Tree) and id(tree) not in checked:
            width = getattr(obj, "n_features_in_", None)
            check_tree(tree, f"skops artifact {uri} ({type(obj).__name__})", None if width is None else int(width))
            checked.add(id(tree))
    for obj in objects:
        if isinstance(obj, Tree) and id(obj) not in checked:
            check_tree(obj, f"skops artifact {uri}", None)
            checked.add(id(obj))
    return len(checked)
