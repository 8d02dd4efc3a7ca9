"""`grpokit compare`: several update rules on the same task, from the same start, over several seeds.

Is a gain due to the update rule, or to sampling and verifying? Every method here samples the
same number of completions per step from the same warmed-up model, with the same seed, rewards
and evaluation; only the rule that turns verified groups into an update differs. Steps, per seed s
(`train.seed` + 0, 1, ..., N-1):
1. one SFT warm-up at seed s (method `sft` on the demonstrations), shared by every method of that
   seed: the warm-up's own seed-to-seed spread is part of what the intervals measure, and the
   methods of one seed start from the same weights, so their paired difference cancels it;
2. each method (and, with a sweep, each value of the swept key) in its own process (so peak
   memory is that method's own), from that warm-up's model, seed s: the same data order;
3. per method, across seeds: mean and 95% Student-t interval of final and best held-out accuracy,
   of the mean accuracy over a common span of training time, of the costs; the paired per-seed
   difference against a reference method; a table, summary.json and a plot of mean curves with bands.

With a sweep (`optim.lr=1e-5,5e-5,1e-4`), runs evaluate on a validation split during training;
each method keeps the value with the best mean final validation accuracy, and its final models at
that value are then evaluated once on the test prompts, which played no part in the choice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from grpokit.config import CHOICES, load_config, save_config
from grpokit.errors import GrpokitError
from grpokit.stats import area_under_curve, binomial_standard_error, mean_interval, paired_difference

DEFAULT_METHODS = ("grpo", "rloo", "rft", "online_dpo", "online_orpo", "ppo")
CONFIDENCE = 0.95


def _run(args: list[str], log: Path, command: str = "train") -> str:
    """One `grpokit <command>` in its own process; its output goes to a log file, which a failure names."""
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.call([sys.executable, "-m", "grpokit", command, *args], stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text(encoding="utf-8", errors="replace")
    if code != 0:
        tail = text.strip().splitlines()[-5:]
        raise GrpokitError(f"`grpokit {command} {' '.join(args)}` failed (exit {code}); see {log}:\n" + "\n".join(tail))
    return text


def _train(args: list[str], run_dir: Path) -> Path:
    """Train into run_dir, or reuse it when it already holds a finished run of exactly these arguments."""
    record = run_dir.with_name(run_dir.name + ".args.json")
    if (run_dir / "summary.json").is_file() and record.is_file() and json.loads(record.read_text()) == args:
        print(f"compare: reusing the finished run {run_dir}", file=sys.stderr)
        return run_dir
    print(f"compare: {run_dir}", file=sys.stderr)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    _run([*args, "--out", str(run_dir), "--overwrite"], run_dir.with_name(run_dir.name + ".log"))
    record.write_text(json.dumps(args))
    return run_dir


def warmup_overrides(config) -> list[str]:
    """The config's SFT warm-up, expressed as an `sft` run of its own."""
    w = config.warmup
    return ["train.method=sft", f"train.steps={w.steps}", f"offline.batch_size={w.batch_size}",
            f"offline.completion_field={w.completion_field}", f"optim.lr={w.lr}", f"optim.schedule={w.schedule}",
            "optim.warmup_steps=0", "warmup.steps=0", "eval.every=0", "train.save_every=0"]


def parse_sweep(spec: str | None) -> tuple[str, list[str]] | None:
    """'optim.lr=1e-5,5e-5' -> ('optim.lr', ['1e-5', '5e-5'])."""
    if not spec:
        return None
    key, _, values = spec.partition("=")
    choices = [v.strip() for v in values.split(",") if v.strip()]
    if not key.strip() or not choices:
        raise GrpokitError(f"--sweep takes KEY=V1,V2,... (e.g. optim.lr=1e-5,5e-5,1e-4); got {spec!r}")
    return key.strip(), choices


def compare(config_path: str | None, overrides: list[str], out_dir: str | Path,
            methods: tuple[str, ...] = DEFAULT_METHODS, progress: bool = False, seeds: int = 1,
            reference: str | None = "grpo", sweep: str | None = None, valid_path: str | None = None) -> dict:
    """Run `methods` over `seeds` seeds, each seed from its own shared warm-up; write table.md, summary.json, a plot.

    The config's data.eval holds the test prompts. With `sweep` ("KEY=V1,V2,..."), training runs
    evaluate on `valid_path` instead, and the test prompts only score each method's chosen value.
    """
    from grpokit.methods import online_methods

    online = online_methods()
    unknown = [m for m in methods if m not in CHOICES["train.method"]]
    offline = [m for m in methods if m not in unknown and m not in online]
    if not methods or unknown or offline:
        raise GrpokitError(f"compare runs online methods ({', '.join(online)}); got "
                           f"{', '.join(unknown + offline)}.")
    if seeds < 1:
        raise GrpokitError(f"--seeds must be at least 1, got {seeds}.")
    swept = parse_sweep(sweep)
    if swept and not valid_path:
        raise GrpokitError("--sweep picks a value on a validation split held apart from the test prompts: "
                           "give one with --valid FILE.")
    config = load_config(config_path, overrides)  # validated once, before anything runs
    for value in swept[1] if swept else ():
        load_config(config_path, [*overrides, f"{swept[0]}={value}"])  # every swept value too
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base_config.yaml"
    save_config(config, base)
    common = [f"train.progress={str(progress).lower()}", "train.save_every=0"]
    values = swept[1] if swept else [None]
    seed_list = [config.train.seed + i for i in range(seeds)]

    runs: dict[str, dict[str | None, dict[int, dict]]] = {m: {v: {} for v in values} for m in methods}
    for seed in seed_list:
        start_model = config.model.path
        if config.warmup.steps > 0:
            warm = _train([str(base), *warmup_overrides(config), *common, f"train.seed={seed}"],
                          out / f"seed{seed}" / "warmup")
            start_model = str(warm / "final")
        for method in methods:
            for value in values:
                extra = [f"{swept[0]}={value}", f"data.eval={valid_path}"] if swept else []
                run_dir = _train([str(base), f"train.method={method}", f"model.path={start_model}", "warmup.steps=0",
                                  f"train.seed={seed}", *common, *extra],
                                 out / f"seed{seed}" / (method if value is None else f"{method}@{value}"))
                runs[method][value][seed] = method_result(run_dir)

    chosen = {m: _choose(runs[m]) for m in methods}
    if swept:  # the chosen value's final models, scored once on the test prompts
        for method in methods:
            for r in runs[method][chosen[method]].values():
                r["validation"] = {"accuracy_after": r["accuracy_after"], "accuracy_before": r["accuracy_before"]}
                test = _test_eval(base, Path(r["run_dir"]), config.data.eval)
                r["accuracy_after"], r["eval_unscored"] = test["accuracy"], r["eval_unscored"] + test["unscored"]
                r["eval_n"] = test["n"]  # the table's standard error is the test evaluation's, not validation's
    results = aggregate({m: runs[m][chosen[m]] for m in methods},
                        reference=reference if reference in methods else None)
    for method in methods:
        results[method]["value"] = chosen[method] if swept else None
        if swept:
            results[method]["sweep"] = {v: mean_interval([r["validation"]["accuracy_after"] if "validation" in r
                                                          else r["accuracy_after"] for r in runs[method][v].values()])
                                        for v in values}
    eval_n = next(iter(results.values()))["eval_n"]
    meta = {"seeds": seed_list, "reference": reference if reference in methods else None,
            "interval": f"{CONFIDENCE:.0%} Student-t interval over seeds",
            "sweep": {"key": swept[0], "values": swept[1], "valid": valid_path} if swept else None,
            "lr": config.optim.lr, "test": config.data.eval, "eval_n": eval_n, "warmup_steps": config.warmup.steps,
            "eval_standard_error_max": binomial_standard_error(0.5, eval_n) if eval_n else None}
    table = format_table(results, meta)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    from grpokit.plots import plot_compare

    plots = [plot_compare(results, out / "accuracy.png",
                          split="validation" if swept else "held-out")]
    summary = {**meta, "methods": results, "table": str(out / "table.md"), "plots": [str(p) for p in plots]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _choose(by_value: dict[str | None, dict[int, dict]]) -> str | None:
    """The value with the highest mean final accuracy over seeds (the first one on a tie)."""
    def score(value):
        finals = [r["accuracy_after"] for r in by_value[value].values()]
        return sum(finals) / len(finals)

    return max(by_value, key=score)


def _test_eval(base: Path, run_dir: Path, test_path: str) -> dict:
    """Greedy evaluation of a run's final model on the test prompts, by `grpokit eval` in its own process."""
    text = _run([str(run_dir / "final"), test_path, "--config", str(base), "--json"], run_dir.parent /
                f"{run_dir.name}.test.log", command="eval")
    line = [ln for ln in text.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def method_result(run_dir: Path) -> dict:
    """One run's numbers, from its summary.json and metrics.jsonl."""
    from grpokit.jsonl import read_log

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    rows = read_log(run_dir / "metrics.jsonl")
    steps = [r for r in rows if r.get("phase") == "train"]
    evals = [r for r in rows if "eval_accuracy" in r and r.get("phase") in ("before", "eval", "after")]
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    return {
        "run_dir": str(run_dir),
        "accuracy_before": before.get("accuracy"), "accuracy_after": after.get("accuracy"),
        "format_before": before.get("format_rate"), "format_after": after.get("format_rate"),
        "eval_n": after.get("n"),
        "train_seconds": summary["train_seconds"],
        "tokens_generated": sum(r.get("tokens_generated", 0) for r in steps),
        "tokens_backpropagated": sum(r.get("tokens_backpropagated", 0) for r in steps),
        "peak_memory_mb": summary["peak_memory_mb"],
        "trained_state_mb": summary["trained_state_mb"],
        "zero_variance_fraction": _mean([r.get("zero_variance_fraction") for r in steps]),
        "steps_without_data": sum(1 for r in steps if r.get("no_data_reason")),
        "steps": len(steps),
        "curve": [(r["step"], r["train_seconds"], r["eval_accuracy"]) for r in evals],
        "eval_unscored": sum(r.get("eval_unscored", 0) for r in evals),  # a reward failed on them
    }


def _mean(values):
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


COSTS = ("train_seconds", "tokens_generated", "tokens_backpropagated", "trained_state_mb", "peak_memory_mb")


def aggregate(runs: dict[str, dict[int, dict]], reference: str | None = None) -> dict[str, dict]:
    """Per method: intervals over seeds of accuracy, time-averaged accuracy and costs; paired differences.

    "auc" is the area under held-out accuracy against training time over the first T seconds,
    divided by T, where T is the shortest training time of any method at that seed: the mean
    accuracy over a span of training time every method covered, so a longer run earns nothing
    for its extra time and a faster one nothing for stopping early.
    """
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in runs.values())))
    horizon = {s: min(runs[m][s]["train_seconds"] for m in runs) for s in seeds}
    per_seed: dict[str, dict[str, list[float]]] = {}
    for method, by_seed in runs.items():
        metrics: dict[str, list[float]] = {k: [] for k in ("final_accuracy", "best_accuracy", "auc", "before")}
        for s in seeds:
            r = by_seed[s]
            _, seconds, accuracy = zip(*r["curve"])
            metrics["final_accuracy"].append(r["accuracy_after"])
            metrics["best_accuracy"].append(max(accuracy[1:] or accuracy))  # the best evaluation after step 0
            metrics["auc"].append(area_under_curve(list(seconds), list(accuracy), until=horizon[s]) / horizon[s]
                                  if horizon[s] > 0 else accuracy[0])
            metrics["before"].append(r["accuracy_before"])
        per_seed[method] = metrics
    results = {}
    for method, by_seed in runs.items():
        rows = [by_seed[s] for s in seeds]
        result = {key: mean_interval(values, CONFIDENCE) for key, values in per_seed[method].items()}
        result.update({key: mean_interval([r[key] for r in rows], CONFIDENCE) for key in COSTS})
        result["zero_variance_fraction"] = _mean([r["zero_variance_fraction"] for r in rows])
        result["steps_without_data"] = sum(r["steps_without_data"] for r in rows)
        result["steps"] = sum(r["steps"] for r in rows)
        result["eval_unscored"] = sum(r.get("eval_unscored", 0) for r in rows)
        result["eval_n"] = rows[0]["eval_n"]
        result["seeds"] = seeds
        result["auc_horizon_seconds"] = [horizon[s] for s in seeds]
        result["curves"] = {s: by_seed[s]["curve"] for s in seeds}
        result["runs"] = {s: by_seed[s]["run_dir"] for s in seeds}
        if reference is not None:
            result["vs_reference"] = {key: paired_difference(per_seed[method][key], per_seed[reference][key],
                                                             CONFIDENCE)
                                      for key in ("final_accuracy", "best_accuracy", "auc")}
        results[method] = result
    return results


def _interval(r: dict, pct: bool = True) -> str:
    """'55.0% [48.2, 61.8]' (an interval in points), or the mean alone for one seed."""
    if r["mean"] is None:
        return "-"
    if not pct:
        return f"{r['mean']:,.0f}" if r["low"] is None else f"{r['mean']:,.0f} [{r['low']:,.0f}, {r['high']:,.0f}]"
    if r["low"] is None:
        return f"{r['mean']:.1%}"
    return f"{r['mean']:.1%} [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


def _difference(r: dict) -> str:
    """'+3.5 [-2.1, +9.1]' in points, with ' *' when the interval excludes 0."""
    if r["low"] is None:
        return f"{100 * r['mean']:+.1f}"
    return f"{100 * r['mean']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]" + (" *" if r["excludes_zero"]
                                                                                       else "")


def format_table(results: dict[str, dict], meta: dict) -> str:
    ref, n_seeds = meta["reference"], len(meta["seeds"])
    sweep = meta["sweep"]
    param = sweep["key"] if sweep else "optim.lr"
    first = next(iter(results.values()))
    horizon = sum(first["auc_horizon_seconds"]) / len(first["auc_horizon_seconds"])
    curve_split = " (valid)" if sweep else ""
    header = (f"| method | {param} | final accuracy | best accuracy{curve_split} | mean accuracy over the first "
              f"{horizon:.0f} s{curve_split} |" + (f" Δ final vs {ref} |" if ref else "")
              + " train time (s) | tokens backprop | trained state (MB) | peak RSS (MB) | zero-variance groups |"
              + " steps without data |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for method, r in results.items():
        value = r["value"] if sweep else meta["lr"]
        lines.append(f"| {method} | {value} | {_interval(r['final_accuracy'])} | {_interval(r['best_accuracy'])} | "
                     f"{_interval(r['auc'])} |" + (f" {_difference(r['vs_reference']['final_accuracy'])} |" if ref
                                                   else "")
                     + f" {_interval(r['train_seconds'], pct=False)} | {_interval(r['tokens_backpropagated'], False)}"
                     f" | {r['trained_state_mb']['mean']:.1f} | {r['peak_memory_mb']['mean']:.0f} | "
                     f"{'-' if r['zero_variance_fraction'] is None else format(r['zero_variance_fraction'], '.1%')} | "
                     f"{r['steps_without_data']}/{r['steps']} |")
    se = meta["eval_standard_error_max"]
    notes = [
        "",
        f"Seeds {', '.join(map(str, meta['seeds']))}; "
        + ("each seed has its own SFT warm-up, shared by every method of that seed (warm-up accuracy "
           if meta["warmup_steps"] else "no warm-up: every method starts from the model (accuracy ")
        + f"{_interval(first['before'])}{curve_split}).",
        f"[low, high]: {meta['interval']} (t with {n_seeds - 1} degrees of freedom)." if n_seeds > 1 else
        "One seed: no interval; run --seeds 3 or more before ranking methods.",
        f"Held-out prompts: {meta['eval_n']} ({meta['test']}); one evaluation's standard error is at most "
        f"{100 * se:.1f} points." if se else "",
        "Best accuracy is the highest of the evaluations after step 0: a maximum of noisy numbers, biased upward.",
        "Mean accuracy over the first T s: the area under accuracy against training time up to T, divided by T; "
        "T is the shortest training time of any method at that seed.",
    ]
    unscored = {method: r["eval_unscored"] for method, r in results.items() if r.get("eval_unscored")}
    if unscored:
        notes.append("eval_unscored (held-out completions a reward failed on, over every evaluation and seed; each "
                     "accuracy is over the scored rest): " + ", ".join(f"{m} {n}" for m, n in unscored.items()) + ".")
    if ref:
        notes.append(f"Δ final vs {ref}: the per-seed paired difference (same seed, same start, same data order), "
                     "in points; * marks an interval that excludes 0.")
    if sweep:
        notes.append(f"{sweep['key']} chosen per method by mean final accuracy on {sweep['valid']} over "
                     f"{', '.join(sweep['values'])}; final accuracy is then measured on the test prompts.")
        notes += ["", "| method | " + " | ".join(f"valid accuracy at {v}" for v in sweep["values"]) + " |",
                  "|---|" + "---|" * len(sweep["values"])]
        for method, r in results.items():
            notes.append(f"| {method} | " + " | ".join(_interval(r["sweep"][v]) for v in sweep["values"]) + " |")
    start = "warm-up" if meta["warmup_steps"] else "start"
    notes += ["", "Final accuracy per seed:", "", f"| seed | {start} | " + " | ".join(results) + " |",
              "|---|---|" + "---|" * len(results)]
    for i, seed in enumerate(first["seeds"]):
        notes.append(f"| {seed} | {first['before']['values'][i]:.1%} | "
                     + " | ".join(f"{r['final_accuracy']['values'][i]:.1%}" for r in results.values()) + " |")
    return "\n".join(lines + [n for n in notes if n is not None])
