"""Render a prompt as the exact text the model sees: a template, the chat template, or as is."""

from __future__ import annotations

import string

from grpokit.errors import GrpokitError


def render_prompt(
    prompt: str | list[dict],
    tokenizer,
    *,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    tools: list[dict] | None = None,
) -> str:
    """The exact text the model sees for `prompt`, in this order of precedence:

    1. `prompt_template` (string prompts only) is a format string with one placeholder,
       `{prompt}`: "Question: {prompt}\\nAnswer:". A `system_prompt` goes before it, then "\\n".
    2. A tokenizer with a chat template renders the conversation (a string prompt becomes one
       user message; `system_prompt` is added first unless a system message exists) and opens
       the assistant's turn (`add_generation_prompt=True`); `tools` (JSON schemas) are rendered by
       the template where it shows tools (multi-turn rollouts in the chat-template tool format).
    3. Otherwise a string prompt is used as it is, after `system_prompt` and "\\n" if given.
       A conversation is an error here: joining messages into a layout the model never saw in
       training would quietly hurt it, so the user must choose a template.
    """
    if prompt_template is not None:
        if not isinstance(prompt, str):
            raise GrpokitError(
                "prompt_template applies to string prompts, but this prompt is a conversation "
                "(a list of messages); unset prompt_template to render it with the tokenizer's "
                "chat template."
            )
        text = _fill_template(prompt_template, prompt)
        return _with_bos(f"{system_prompt}\n{text}" if system_prompt else text, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = list(prompt)
        if system_prompt and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        from jinja2 import TemplateError

        try:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **({"tools": tools} if tools else {})
            )
        except TemplateError as e:
            raise GrpokitError(
                f"the tokenizer's chat template failed on a prompt with roles "
                f"{[m.get('role') for m in messages]}: {e}"
            ) from e
    if isinstance(prompt, str):
        return _with_bos(f"{system_prompt}\n{prompt}" if system_prompt else prompt, tokenizer)
    raise GrpokitError(
        "this prompt is a conversation (a list of messages) but the tokenizer has no chat "
        "template to render it; use a tokenizer with a chat template, or string prompts with a "
        "prompt_template such as 'Question: {prompt}\\nAnswer:'."
    )


def _with_bos(text: str, tokenizer) -> str:
    """Prepend the BOS text when the tokenizer itself would add BOS (Llama, Gemma base models).

    Prompts are tokenised with add_special_tokens=False (a chat template already writes its own
    BOS), so a plain prompt must carry the BOS the model was trained with.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or text.startswith(bos):
        return text
    ids = tokenizer("x")["input_ids"]
    return bos + text if ids and ids[0] == tokenizer.bos_token_id else text



def _fill_template(template: str, prompt: str) -> str:
    """`template.format(prompt=prompt)`, refusing templates that would drop the prompt or need
    values that do not exist."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise GrpokitError(
            f"prompt_template {template!r} is not a valid format string ({e}); write {{{{ and }}}} "
            "for literal braces."
        ) from None
    if names != {"prompt"}:
        others = sorted(names - {"prompt"})
        found = f"the placeholders {', '.join('{' + n + '}' for n in others)}" if others else "none"
        raise GrpokitError(
            f"prompt_template {template!r}: expected exactly one placeholder, {{prompt}}, found "
            f"{found}; write {{{{ and }}}} for literal braces."
        )
    return template.format(prompt=prompt)

