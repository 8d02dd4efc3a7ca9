"""The built-in tool environment: the policy calls a tool, the environment runs it and replies with
its result, in one of two call formats.

- tags (any model, e.g. the tiny one): `<tool>calculator(37*48)</tool>` is answered with
  `<result>1776</result>`. The text inside the parentheses is the tool's one string argument.
- chat_template (tokenizers whose chat template renders tools, Hermes/Qwen style): the model writes
  `<tool_call>{"name": "calculator", "arguments": {"expression": "37*48"}}</tool_call>`, and the
  reply is exactly what the template renders for a `tool` message followed by a new assistant turn.

A call that cannot be parsed, names no tool, raises, times out, crashes its worker or returns a
non-string is answered with the error (env.on_tool_error: reply) or ends the rollout (end); either
way it is counted by kind. A result longer than env.max_result_chars is cut, and counted.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from grpokit.envs.base import Environment
from grpokit.envs.tool_runner import ToolRunner
from grpokit.errors import GrpokitError


class MalformedCall(ValueError):
    pass


class TagFormat:
    name = "tags"
    stop_strings = ("</tool>",)
    _CALL = re.compile(r"<tool>(.*?)</tool>\s*$", re.DOTALL)
    _NAMED = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.DOTALL)

    def parse(self, turn: str) -> tuple[str, str]:
        body = self._CALL.search(turn[turn.rfind("<tool>"):]) if "<tool>" in turn else None
        if body is None:
            raise MalformedCall("expected <tool>name(argument)</tool> at the end of the turn")
        named = self._NAMED.match(body.group(1))
        if named is None:
            raise MalformedCall(f"expected name(argument) inside <tool>, got {body.group(1)[:80]!r}")
        return named.group(1), named.group(2)

    def reply(self, text: str) -> str:
        return f"<result>{text}</result>"

    def reply_spans(self, text: str) -> list[tuple[int, int]]:
        """Where replies sit in a written-out conversation (a demonstration)."""
        return [m.span() for m in re.finditer(r"<result>.*?</result>", text, re.DOTALL)]


class ChatTemplateFormat:
    """Hermes-style calls, replied to through the tokenizer's own chat template."""

    name = "chat_template"
    stop_strings = ("</tool_call>",)
    _CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>\s*$", re.DOTALL)
    _PROBE_CALL, _PROBE_RESULT = "\x00CALL\x00", "\x00RESULT\x00"

    def __init__(self, tokenizer):
        # What the template writes after an assistant message holding the call: close that turn, render
        # the tool message, open the next assistant turn. Read off two renderings of a probe conversation.
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": self._PROBE_CALL}]
        try:
            rendered = tokenizer.apply_chat_template(
                [*messages, {"role": "tool", "content": self._PROBE_RESULT}], tokenize=False,
                add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - jinja raises many types
            raise GrpokitError(f"env.format chat_template: the tokenizer's chat template cannot render a tool "
                               f"message ({type(e).__name__}: {e}); use env.format: tags.") from None
        after_call = rendered.split(self._PROBE_CALL, 1)[-1]
        if self._PROBE_CALL not in rendered or self._PROBE_RESULT not in after_call:
            raise GrpokitError("env.format chat_template: the tokenizer's chat template does not render the "
                               "assistant's text and a tool message as given; use env.format: tags.")
        self._before, self._after = after_call.split(self._PROBE_RESULT, 1)

    def parse(self, turn: str) -> tuple[str, dict]:
        body = self._CALL.search(turn[turn.rfind("<tool_call>"):]) if "<tool_call>" in turn else None
        if body is None:
            raise MalformedCall("expected <tool_call>{json}</tool_call> at the end of the turn")
        try:
            call = json.loads(body.group(1))
        except json.JSONDecodeError as e:
            raise MalformedCall(f"the tool call is not JSON ({e.msg})") from None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) \
                or not isinstance(call.get("arguments", {}), dict):
            raise MalformedCall('expected {"name": ..., "arguments": {...}}')
        return call["name"], call.get("arguments", {})

    def reply(self, text: str) -> str:
        return f"{self._before}{text}{self._after}"

    def reply_spans(self, text: str) -> list[tuple[int, int]]:
        """Where replies sit in a written-out conversation (a demonstration)."""
        pattern = re.escape(self._before) + ".*?" + re.escape(self._after)
        return [m.span() for m in re.finditer(pattern, text, re.DOTALL)]


def uses_tool_template(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tool" in template


def call_format(name: str, tokenizer):
    """The format env.format names; auto takes the tokenizer's own where its template renders tools."""
    if name == "auto":
        name = "chat_template" if uses_tool_template(tokenizer) else "tags"
    return ChatTemplateFormat(tokenizer) if name == "chat_template" else TagFormat()


class ToolEnvironment(Environment):
    """One rollout's side of the built-in tool environment (the runner and format are shared)."""

    def __init__(self, runner: ToolRunner, fmt, *, max_result_chars: int, on_error: str, description: str = ""):
        self.runner, self.format, self.max_result_chars, self.on_error = runner, fmt, max_result_chars, on_error
        self.stop_strings = fmt.stop_strings
        self.description = description
        self.counts: Counter = Counter()

    def reset(self, row: dict) -> None:
        self.counts = Counter()

    def step(self, turn: str) -> str | None:
        self.counts["tool_calls"] += 1
        try:
            name, arguments = self.format.parse(turn)
        except MalformedCall as e:
            text, kind, message = None, "malformed_call", str(e)
        else:
            text, kind, message = self.runner.call(name, arguments)
        if kind is not None:
            self.counts[f"tool_errors/{kind}"] += 1
            if self.on_error == "end":
                return None
            text = f"error: {message}"
        if len(text) > self.max_result_chars:
            self.counts["truncated_results"] += 1
            text = f"{text[: self.max_result_chars]}... [{len(text) - self.max_result_chars} more characters]"
        return self.format.reply(text)

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def describe(self) -> str:
        return self.description
