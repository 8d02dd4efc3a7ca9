"""The environment interface: the other side of a multi-turn rollout.

The sampler makes one environment object per rollout, calls `reset` with the rollout's training
row, and after every policy turn that ended with one of `stop_strings` (a tool call's close) calls
`step` with that turn's text. `step` returns the environment's reply, which becomes context for
the next turn but is never trained on, or None when the conversation is over. A turn that ends
with EOS ends the rollout without a `step`.

A user environment is a plain class named in the config (`env.name: my_env.py:Counter` or
`package.module:Counter`), made with no arguments:

    class Counter(Environment):
        stop_strings = ("</guess>",)

        def reset(self, row):
            self.target, self.turns = int(row["answer"]), 0

        def step(self, turn):
            self.turns += 1
            guess = int(turn.rsplit("<guess>", 1)[-1].removesuffix("</guess>"))
            return "<hint>higher</hint>" if guess < self.target else "<hint>lower</hint>"

        def reward(self):
            return 1.0 / self.turns  # optional: logged and trained on as the reward component "env"
"""

from __future__ import annotations


class Environment:
    """Base class (and documentation) of an environment. Subclasses override what they need."""

    # Strings that end a policy turn besides EOS. The sampler stops the turn right after one and calls `step`.
    stop_strings: tuple[str, ...] = ()

    def reset(self, row: dict) -> None:
        """Start a conversation for this training row (its fields: prompt, answer and every other column)."""

    def step(self, turn: str) -> str | None:
        """The environment's reply to the policy's turn (text appended as context), or None: done."""
        return None

    def reward(self) -> float | None:
        """A reward of the environment's own once the conversation is over, or None (no reward)."""
        return None

    def stats(self) -> dict[str, int]:
        """Counters for the step's metrics (summed over rollouts), e.g. tool calls and errors by kind."""
        return {}

    def describe(self) -> str:
        """What the policy is offered (e.g. the tools' signatures and docstrings), for `doctor` and prompts."""
        return ""

    def close(self) -> None:
        """Release what the environment holds (called once per sampler, on the factory's shared resources)."""
