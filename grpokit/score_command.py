"""`grpokit score`: apply reward functions to a JSONL file of existing completions.

The way to check a verifier on real model outputs before spending compute on training:
each output row is the input row plus every reward component and the weighted total. Rewards run
as training runs them (the scorer of `grpokit.rewards.make_scorer`: a worker process with
`verify.timeout` per call), so a verifier that hangs or crashes leaves its cell unscored, with the
reason in the row's `reward_errors`, instead of hanging or killing the command.
"""

from __future__ import annotations

from pathlib import Path

from grpokit.errors import GrpokitError
from grpokit.jsonl import parse_jsonl
from grpokit.problems import Problems, missing_path
from grpokit.rewards import RewardComponent, score_completions


def _as_text(value, where: str, field: str, problems: Problems, required: bool) -> str | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.add(where, f"field '{field}' should be a string, found {type(value).__name__}")
        return None
    return value if isinstance(value, str) else (str(int(value)) if float(value).is_integer() else str(value))


def score_file(path: str | Path, components: list[RewardComponent] | None, *, completion_field: str,
               answer_field: str, prompt_field: str = "prompt", scorer=None) -> tuple[list[dict], dict]:
    """Score every row with `scorer` (e.g. `make_scorer(...)`), or else `components` in this process;
    returns (output rows, summary). Bad rows are all reported at once. The summary counts the rows
    without an answer (`rows_without_answer`: a reward that checks one scores them None) and the
    failed cells (`reward_failures`, by component and kind)."""
    if not Path(path).is_file():
        raise missing_path(Path(path))
    problems = Problems()  # unreadable lines and bad fields, all in one error
    rows = parse_jsonl(Path(path), problems)
    completions, answers, prompts, fields = [], [], [], []
    for line, row in rows:
        where = f"{path}:{line}"
        if completion_field not in row:
            problems.add(where, f"missing field '{completion_field}' (the completion; --completion-field names "
                                f"another); row has {', '.join(sorted(row)) or 'no fields'}")
            continue
        completions.append(_as_text(row[completion_field], where, completion_field, problems, True))
        answers.append(_as_text(row.get(answer_field), where, answer_field, problems, False))
        prompt = row.get(prompt_field)
        prompts.append(prompt if isinstance(prompt, str) else "")
        fields.append({k: v for k, v in row.items() if k not in (completion_field, answer_field)})
    problems.raise_if_any(str(path))
    if not rows:
        raise GrpokitError(f"{path}: no rows to score (the file is empty).")
    examples = [{**f, "answer": a} for f, a in zip(fields, answers)]
    scores = scorer.score(prompts, completions, examples) if scorer is not None else \
        score_completions(components, prompts, completions, examples)
    failures: dict[int, list[dict]] = {}
    for e in scores.errors:
        failures.setdefault(e["index"], []).append({k: e[k] for k in ("component", "kind", "message")})
    out_rows = []
    for i, (_, row) in enumerate(rows):
        out_rows.append({**row, "rewards": {name: values[i] for name, values in scores.components.items()},
                         "reward": scores.total[i], **({"reward_errors": failures[i]} if i in failures else {})})
    without_answer = [f"{path}:{line}" for (line, _), a in zip(rows, answers) if a is None]
    summary = {"n": len(rows), "components": scores.summary(),
               "reward_mean": sum(scores.total) / len(rows),
               "unscored_rows": sum(any(v[i] is None for v in scores.components.values()) for i in range(len(rows))),
               "rows_without_answer": len(without_answer), "first_row_without_answer": next(iter(without_answer), None),
               "reward_failures": {name: kinds for name, kinds in scores.error_counts.items() if kinds},
               "first_failure": {**scores.errors[0], "row": f"{path}:{rows[scores.errors[0]['index']][0]}"}
               if scores.errors else None}
    return out_rows, summary
