"""Tools: plain Python functions the policy may call, and the built-in ones.

A tool takes its arguments as keyword arguments (the chat-template format) or one string (the tag
format, `<tool>calculator(37*48)</tool>`), and returns a string. Its signature and docstring are
what the model is shown. Tools are named in the config like rewards: a built-in name, or
`file.py:function` / `package.module:function`.
"""

from __future__ import annotations

import ast
import inspect
import operator
from collections.abc import Callable

from grpokit.errors import GrpokitError
from grpokit.rewards.loading import load_callable

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
              ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_EXPONENT = 100  # 2**(10**10) would hang the worker until its timeout: refuse it at once
_MAX_DIGITS = 1000


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.

    Args:
        expression: the arithmetic to evaluate, e.g. 37*48
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
                raise ValueError(f"exponent {right} is too large (at most {_MAX_EXPONENT})")
            result = _OPERATORS[type(node.op)](left, right)
            if isinstance(result, int) and result.bit_length() > _MAX_DIGITS * 3.33:
                raise ValueError("result too large")
            return result
        raise ValueError(f"only numbers and + - * / // % ** are allowed, not {ast.unparse(node)!r}")

    result = value(tree.body)
    if isinstance(result, float) and result.is_integer() and abs(result) < 1e15:
        result = int(result)
    return str(result)


# Under env.tool_timeout's default (5 s), so the sandbox reports a timeout to the model before the
# tool worker is killed and the call counted as a tool error.
PYTHON_TOOL_SECONDS = 4.0
_STDERR_LINES = 3  # a traceback's last lines name the error; the rest would only crowd the result


def python(code: str) -> str:
    """Run a Python program in a sandbox and return what it printed.

    Args:
        code: the program; print what you want to see, e.g. print(37*48)
    """
    # Model-written code: only ever in the sandbox (no network, read-only system, limits; docs/sandbox.md).
    # A sandbox that cannot start raises SandboxUnavailable: a tool error, counted, never run unconfined.
    from grpokit.sandbox import run_python

    result = run_python(code, timeout=PYTHON_TOOL_SECONDS)
    parts = [result.stdout.rstrip("\n")] if result.stdout.strip() else []
    if not result.ok:
        if not result.timed_out:
            parts += result.stderr.strip().splitlines()[-_STDERR_LINES:]
        parts.append(f"[{result.describe()}]")  # "exit 1", "timed out after 4.0 s", "killed by SIGXCPU ..."
    return "\n".join(parts) if parts else "[no output]"


BUILTIN_TOOLS: dict[str, Callable] = {"calculator": calculator, "python": python}

_FORMS = ("a built-in tool (" + ", ".join(BUILTIN_TOOLS) + "), a dotted path 'package.module:function', or a "
          "file path 'path/to/file.py:function'")


def load_tools(specs: list) -> dict[str, Callable]:
    """Tool name -> function, for the config's `env.tools`."""
    if not isinstance(specs, list) or not specs:
        raise GrpokitError(f"config key 'env.tools' must be a non-empty list of tools; expected items like {_FORMS}.")
    tools: dict[str, Callable] = {}
    for spec in specs:
        fn = load_callable(spec, what="tool", builtins=BUILTIN_TOOLS, forms=_FORMS)
        name = getattr(fn, "__name__", str(spec))
        if name in tools:
            raise GrpokitError(f"config key 'env.tools': two tools are named {name!r}; tool names must differ.")
        tools[name] = fn
    return tools


def describe_tool(name: str, fn: Callable) -> str:
    """One line the model can read: `calculator(expression: str) -> str: Evaluate an arithmetic ...`."""
    try:
        signature = str(inspect.signature(fn, eval_str=True))  # "str", not "'str'", under postponed annotations
    except (TypeError, ValueError, NameError):
        signature = "(...)"
    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    return f"{name}{signature}" + (f": {doc[0]}" if doc else "")


def tool_schema(fn: Callable) -> dict:
    """The JSON schema chat templates render (transformers' own reading of signature and docstring)."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(fn)
    except Exception as e:  # noqa: BLE001 - transformers raises its own DocstringParsingException types
        raise GrpokitError(f"tool {fn.__name__!r} cannot be shown to a chat template: {e}. The chat-template "
                           "format needs type hints and a Google-style docstring with an Args section; "
                           "or use env.format: tags.") from None
