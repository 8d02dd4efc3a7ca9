"""Find a reward function by name: a built-in, a dotted import path, or a `.py` file.

Users name rewards in the config (`rewards: [accuracy, my_pkg.rewards:length]`), so every way
this can go wrong ends in a `GrpokitError` that says which name failed and what was expected.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from grpokit.errors import GrpokitError
from grpokit.rewards.builtin import BUILTIN_REWARDS

_FORMS = (
    "a built-in name (" + ", ".join(BUILTIN_REWARDS) + "), a dotted path "
    "'package.module:function' or 'package.module.function', or a file path "
    "'path/to/file.py:function'"
)


def _import_module(module_name: str, reward: str, what: str = "reward") -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Tell apart "your module does not exist" from "your module imports something missing".
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise GrpokitError(
                f"{what} {reward!r}: no module named {module_name!r} can be imported (is it "
                f"installed, or is its folder on PYTHONPATH?); expected {_FORMS}."
            ) from e
        raise GrpokitError(
            f"{what} {reward!r}: importing module {module_name!r} failed because it imports "
            f"{e.name!r}, which is not installed."
        ) from e
    except Exception as e:
        raise GrpokitError(
            f"{what} {reward!r}: importing module {module_name!r} raised {type(e).__name__}: {e}"
        ) from e


def _load_file(file: str, reward: str, what: str = "reward") -> ModuleType:
    path = Path(file)
    if not path.is_file():
        raise GrpokitError(
            f"{what} {reward!r}: file {file!r} does not exist (resolved against the current "
            f"directory {Path.cwd()}); expected 'path/to/file.py:function'."
        )
    resolved = path.resolve()
    # Register under a name unique to the file so that loading the same file twice gives the
    # same module, and so dataclasses or pickling inside it can find their module.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_name = f"grpokit_user_rewards_{resolved.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise GrpokitError(f"{what} {reward!r}: {file!r} cannot be loaded as a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[module_name]
        raise GrpokitError(
            f"{what} {reward!r}: {file!r} has a syntax error at line {e.lineno}: {e.msg}."
        ) from e
    except Exception as e:
        del sys.modules[module_name]
        raise GrpokitError(
            f"{what} {reward!r}: running {file!r} raised {type(e).__name__}: {e}"
        ) from e
    return module


def _get_attribute(module: ModuleType, attribute: str, where: str, reward: str, what: str = "reward") -> Callable:
    obj: object = module
    for part in attribute.split("."):  # "Class.method" is allowed
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            close = difflib.get_close_matches(attribute, public, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise GrpokitError(
                f"{what} {reward!r}: {where} has no attribute {attribute!r}; expected the name "
                f"of a {what} defined there.{hint}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise GrpokitError(
            f"{what} {reward!r}: {where}.{attribute} is a {type(obj).__name__}, not a "
            f"function; expected a callable {what}."
        )
    return obj


def load_reward_function(name: str) -> Callable:
    """Return the reward function that `name` refers to.

    `name` is a built-in (`"accuracy"`, `"format"`), a dotted path (`"pkg.mod:fn"` or
    `"pkg.mod.fn"`), or a file (`"rewards/mine.py:fn"`, relative to the current directory).

    >>> load_reward_function("accuracy").__name__
    'accuracy'
    >>> load_reward_function("grpokit.rewards.builtin:format_reward").__name__
    'format_reward'
    """
    return load_callable(name, what="reward", builtins=BUILTIN_REWARDS, forms=_FORMS)


def load_callable(name: str, *, what: str, builtins: dict, forms: str) -> Callable:
    """A callable named like a reward (`builtins` name, dotted path or `file.py:name`); `what` names
    the kind of thing in every error ("reward", "tool", "environment")."""
    if not isinstance(name, str) or not name.strip():
        raise GrpokitError(f"{what} name {name!r} is not a non-empty string; expected {forms}.")
    name = name.strip()
    if name in builtins:
        return builtins[name]

    file, sep, attribute = name.rpartition(":")
    if sep and file.endswith(".py"):
        return _get_attribute(_load_file(file, name, what), attribute, file, name, what)
    if name.endswith(".py"):
        raise GrpokitError(
            f"{what} {name!r} names a file but no function; expected 'path/to/file.py:function'."
        )
    if sep:
        return _get_attribute(_import_module(file, name, what), attribute, file, name, what)
    module_name, dot, attribute = name.rpartition(".")
    if dot:
        return _get_attribute(_import_module(module_name, name, what), attribute, module_name, name, what)

    close = difflib.get_close_matches(name, list(builtins), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise GrpokitError(f"{what} {name!r} is not a built-in {what}; expected {forms}.{hint}")


def is_batched(fn: Callable) -> bool:
    """Tell a TRL-style batched reward from a per-sample one.

    Rule: an attribute `fn.batched` (True or False) decides if present. Otherwise the first
    positional parameter decides: `prompts` or `completions` means batched (TRL's
    `f(prompts, completions, **kwargs) -> list[float]`); `completion` means per-sample
    (`f(completion, **fields) -> float | None`). Any other signature is an error.

    >>> is_batched(lambda completions, **kw: [1.0] * len(completions))
    True
    >>> is_batched(lambda completion, **fields: 1.0)
    False
    """
    flag = getattr(fn, "batched", None)
    if isinstance(flag, bool):
        return flag
    label = getattr(fn, "__qualname__", None) or repr(fn)
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as e:
        raise GrpokitError(f"reward {label!r}: its signature cannot be inspected ({e}).") from e
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    first = positional[0].name if positional else None
    if first in ("prompts", "completions"):
        return True
    if first == "completion":
        return False
    raise GrpokitError(
        f"reward {label!r}: first parameter is {first!r}, so it is unclear how to call it. "
        "Expected either a per-sample reward `f(completion, **fields) -> float | None` or a "
        "TRL-style batched reward `f(prompts, completions, **kwargs) -> list[float]` (or set "
        "the attribute `f.batched = True`)."
    )
