"""Multi-turn rollouts: an environment answers the policy's turns (a tool's result, a hint), and the
whole conversation is one rollout whose environment tokens are context, never trained on.

`Environment` is the interface (`base.py`); the built-in one runs tools (`tool_env.py`, tools in
`tools.py`, run in a killable worker by `tool_runner.py`). `EnvironmentFactory` makes one
environment per rollout from the config's `env` section; `grpokit.multiturn` drives the turns.
"""

from __future__ import annotations

from grpokit.envs.base import Environment
from grpokit.envs.tools import BUILTIN_TOOLS, calculator, describe_tool, load_tools
from grpokit.errors import GrpokitError


class EnvironmentFactory:
    """Makes one environment per rollout and owns what they share (the tool worker)."""

    def __init__(self, config, tokenizer):
        e = config.env
        for key, value in (("env.max_turns", e.max_turns), ("env.max_tokens", e.max_tokens),
                           ("env.max_result_chars", e.max_result_chars)):
            if not isinstance(value, int) or value < 1:
                raise GrpokitError(f"config key '{key}' must be a whole number of at least 1; got {value!r}.")
        if not e.tool_timeout > 0:
            raise GrpokitError(f"config key 'env.tool_timeout' must be a positive number of seconds; "
                               f"got {e.tool_timeout!r}.")
        self.config, self.runner = config, None
        if e.name == "tools":
            from grpokit.envs.tool_env import ToolEnvironment, call_format
            from grpokit.envs.tool_runner import ToolRunner

            tools = load_tools(e.tools)
            self.format = call_format(e.format, tokenizer)
            self.runner = ToolRunner(e.tools, timeout=e.tool_timeout)
            description = "\n".join(describe_tool(name, fn) for name, fn in tools.items())
            self._new = lambda: ToolEnvironment(self.runner, self.format, max_result_chars=e.max_result_chars,
                                                on_error=e.on_tool_error, description=description)
        else:
            from grpokit.rewards.loading import load_callable

            cls = load_callable(e.name, what="environment", builtins={}, forms=(
                "'tools' (the built-in tool environment), 'package.module:Class' or 'path/to/file.py:Class'"))
            self.format = None
            self._new = cls
        self.stop_strings = tuple(self._new().stop_strings)  # the same for every rollout

    def new(self) -> Environment:
        return self._new()

    def context_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of a written-out conversation that are the environment's (its replies): a
        warm-up demonstration trains on the rest only. A user environment may define `context_spans`."""
        if self.format is not None:
            return self.format.reply_spans(text)
        return list(getattr(self._new(), "context_spans", lambda _: [])(text))

    def describe(self) -> str:
        return self._new().describe()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def check_environment(config, tokenizer) -> list[dict] | None:
    """Fail before the model loads on a bad env section (tools, environment class, call format);
    returns the tools' JSON schemas when prompts must show them (the chat-template format), else None."""
    if not config.env.name:
        return None
    factory = EnvironmentFactory(config, tokenizer)  # loads tools or the class, reads the template
    factory.close()
    if factory.format is None or factory.format.name != "chat_template":
        return None
    from grpokit.envs.tools import tool_schema

    return [tool_schema(fn) for fn in load_tools(config.env.tools).values()]


def make_environments(config, tokenizer) -> EnvironmentFactory | None:
    """The factory for config.env, or None for single-turn rollouts."""
    return EnvironmentFactory(config, tokenizer) if config.env.name else None


__all__ = ["BUILTIN_TOOLS", "Environment", "EnvironmentFactory", "calculator", "check_environment", "describe_tool",
           "load_tools", "make_environments"]
