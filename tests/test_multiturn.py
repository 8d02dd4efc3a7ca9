"""Multi-turn rollouts with tools: the environment's tokens are context, never trained on; tools that
misbehave cost one call; every online method trains on conversations or says why it cannot."""

import json
from pathlib import Path

import pytest
import torch

from grpokit.config import load_config
from grpokit.envs import EnvironmentFactory, calculator, check_environment
from grpokit.envs.tool_env import ChatTemplateFormat, TagFormat
from grpokit.errors import GrpokitError
from grpokit.logprobs import token_logprobs
from grpokit.methods import METHODS, method_class
from grpokit.multiturn import MultiTurnSampler
from grpokit.parallel import single_process
from grpokit.sampler import LocalSampler, Sampler
from grpokit.trainer import train

TOOLS = Path(__file__).parent / "fixtures" / "tools" / "sample_tools.py"


def test_calculator_by_hand_and_what_it_refuses():
    assert calculator("37*48") == "1776"
    assert calculator(" (2 + 3) * -4 ") == "-20"
    assert calculator("7/2") == "3.5" and calculator("8/2") == "4" and calculator("2**10") == "1024"
    for bad in ("__import__('os')", "2**1000", "x + 1", "1 +"):
        with pytest.raises(ValueError):
            calculator(bad)
    with pytest.raises(ZeroDivisionError):
        calculator("1/0")


def test_tag_calls_are_parsed_at_the_end_of_the_turn():
    f = TagFormat()
    assert f.parse("I will compute <tool>calculator(37*48)</tool>") == ("calculator", "37*48")
    assert f.parse("<tool>a(1)</tool> then <tool>echo( x(y) )</tool>\n") == ("echo", " x(y) ")
    for bad in ("no call", "<tool>calculator 37*48</tool>", "<tool></tool>"):
        with pytest.raises(ValueError):
            f.parse(bad)
    assert f.reply("1776") == "<result>1776</result>"


def _config(tiny_home, *extra):
    return load_config(None, [f"model.path={tiny_home['model']}", "env.name=tools", *extra])


def test_a_misbehaving_tool_costs_one_call_and_is_counted(tiny_model_and_tokenizer, tiny_home):
    _, tokenizer = tiny_model_and_tokenizer
    names = ["echo", "raises", "hangs", "not_a_string", "huge", "dies"]
    config = _config(tiny_home, f"env.tools=[{', '.join(f'{TOOLS}:{n}' for n in names)}]", "env.tool_timeout=2",
                     "env.max_result_chars=50")
    envs = EnvironmentFactory(config, tokenizer)
    try:
        env = envs.new()
        env.reset({})
        replies = {name: env.step(f"<tool>{name}(hello)</tool>") for name in names}
        assert replies["echo"] == "<result>hello</result>"
        assert "RuntimeError: tool failed on 'hello'" in replies["raises"]
        assert "no result within 2 s" in replies["hangs"]
        assert "returned a int" in replies["not_a_string"]
        assert replies["huge"].startswith("<result>" + "x" * 50 + "... [999950 more characters]")
        assert "process died (exit code 3)" in replies["dies"]
        assert env.step("<tool>echo(after the faults)</tool>") == "<result>after the faults</result>"
        assert env.stats() == {"tool_calls": 7, "tool_errors/exception": 1, "tool_errors/timeout": 1,
                               "tool_errors/not_a_string": 1, "tool_errors/crashed": 1, "truncated_results": 1}
    finally:
        envs.close()
    ended = EnvironmentFactory(_config(tiny_home, f"env.tools=['{TOOLS}:raises']", "env.on_tool_error=end"),
                               tokenizer)
    env = ended.new()
    env.reset({})
    assert env.step("<tool>raises(x)</tool>") is None  # on_tool_error: end
    ended.close()


def test_a_bad_env_section_fails_before_the_model_loads(tiny_model_and_tokenizer, tiny_home):
    _, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(GrpokitError, match="tool 'calculater' is not a built-in tool.*Did you mean 'calculator'"):
        check_environment(_config(tiny_home, "env.tools=[calculater]"), tokenizer)
    with pytest.raises(GrpokitError, match="env.max_turns"):
        check_environment(_config(tiny_home, "env.max_turns=0"), tokenizer)
    assert check_environment(_config(tiny_home), tokenizer) is None  # tags: nothing to render in the prompt
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n{% endif %}" \
                          "{% endfor %}A: "  # drops every other message
    with pytest.raises(GrpokitError, match="does not render the assistant's text and a tool message"):
        check_environment(_config(tiny_home, "env.format=chat_template"), plain)


def test_the_chat_template_format_replies_with_what_the_template_renders(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    hermes = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    hermes.chat_template = (  # a Hermes-like template: tool results come back as a "tool" turn
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if tools %}{% endif %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    f = ChatTemplateFormat(hermes)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "37*48"}}</tool_call>'
    assert f.parse("let me see " + call) == ("calculator", {"expression": "37*48"})
    assert f.reply("1776") == "<|end|>\n<|tool|>1776<|end|>\n<|assistant|>"
    with pytest.raises(ValueError, match="not JSON"):
        f.parse("<tool_call>{oops}</tool_call>")


class ScriptedEngine(Sampler):
    """Continues a conversation with fixed text: a tool call first, then the answer once a result is there."""

    def __init__(self, tokenizer, first="<tool>calculator(3*4)</tool>junk after the call", then="<answer>12</answer>"):
        self.tokenizer, self.first, self.then = tokenizer, first, then
        self.model = None

    def continue_ids(self, contexts, *, max_new_tokens, stop_sequences=None, temperature=None):
        out = []
        for ids in contexts:
            text = self.then if "<result>" in self.tokenizer.decode(ids) else self.first
            drawn = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            drawn = drawn[:max_new_tokens]
            out.append((drawn, [-0.5] * len(drawn)))
        return out


def _scripted(tiny_model_and_tokenizer, tiny_home, *extra, **script):
    _, tokenizer = tiny_model_and_tokenizer
    config = _config(tiny_home, "sampling.max_new_tokens=40", *extra)
    envs = EnvironmentFactory(config, tokenizer)
    sampler = MultiTurnSampler(ScriptedEngine(tokenizer, **script), tokenizer, envs, config)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 * 4?"}], tokenize=False,
                                           add_generation_prompt=True)
    try:
        return sampler.sample([prompt], 2, rows=[{"answer": "12"}]), tokenizer
    finally:
        sampler.close()


def test_a_conversation_masks_exactly_the_environments_tokens(tiny_model_and_tokenizer, tiny_home):
    rollout, tokenizer = _scripted(tiny_model_and_tokenizer, tiny_home)
    assert rollout.completions == ["<tool>calculator(3*4)</tool><result>12</result><answer>12</answer>"] * 2
    t = rollout.tokens
    ids, policy = t.completion_ids_BC[0].tolist(), t.policy_mask_BC[0].tolist()
    env_text = tokenizer.decode([i for i, p in zip(ids, policy) if p == 0])
    assert env_text == "<result>12</result>"
    assert t.completion_mask_BC[0].sum() == len(tokenizer("<tool>calculator(3*4)</tool><result>12</result>"
                                                           "<answer>12</answer>", add_special_tokens=False)
                                                 ["input_ids"]) + 1  # EOS
    assert (rollout.sampling_logprobs_BC[0][t.policy_mask_BC[0] == 0] == 0).all()  # no sampler log-prob for them
    assert not rollout.truncated_B.any()
    assert rollout.env_stats[0] == {"tool_calls": 1, "turns": 2, "env_tokens": len(env_text),
                                    "policy_tokens": int(t.policy_mask_BC[0].sum()), "cut_by": None}


def test_limits_cut_a_conversation_and_say_which(tiny_model_and_tokenizer, tiny_home):
    rollout, _ = _scripted(tiny_model_and_tokenizer, tiny_home, "env.max_turns=1")
    assert rollout.truncated_B.all() and rollout.env_stats[0]["cut_by"] == "turns"
    assert rollout.completions[0] == "<tool>calculator(3*4)</tool>"  # the call, with no turn left to read it
    rollout, _ = _scripted(tiny_model_and_tokenizer, tiny_home, "env.max_tokens=30")
    assert rollout.env_stats[0]["cut_by"] == "tokens" and rollout.tokens.completion_mask_BC.sum(-1).max() == 30
    # a model that never closes its call: cut at the turn's cap, counted as truncated by tokens
    rollout, _ = _scripted(tiny_model_and_tokenizer, tiny_home, first="<tool>calculator(3*4" + "4" * 80)
    assert rollout.env_stats[0]["cut_by"] == "tokens" and rollout.env_stats[0].get("tool_calls", 0) == 0
    assert rollout.tokens.completion_mask_BC.sum(-1).max() == 40


def test_sampled_conversations_have_the_log_probs_of_a_training_forward(tiny_model_and_tokenizer, tiny_home):
    model, tokenizer = tiny_model_and_tokenizer
    config = load_config(None, [f"model.path={tiny_home['model']}", f"env.name={TOOLS}:ChattyVowelEnvironment",
                                "sampling.max_new_tokens=12", "env.max_turns=6", "env.max_tokens=80"])
    envs = EnvironmentFactory(config, tokenizer)
    sampler = MultiTurnSampler(LocalSampler(model, tokenizer, config, single_process()), tokenizer, envs, config)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in ("What is 1 + 2?", "What is 9 + 9?")]
    torch.manual_seed(0)
    rollout = sampler.sample(prompts, 3, rows=[{"answer": "3"}, {"answer": "18"}])
    turns = [s["turns"] for s in rollout.env_stats]
    assert max(turns) >= 3 and sum(s["env_tokens"] for s in rollout.env_stats) > 0  # really several turns
    assert rollout.env_rewards == [float(s["tool_calls"]) for s in rollout.env_stats]
    with torch.no_grad():
        logp = token_logprobs(model, rollout.tokens, config.sampling.temperature, True)
    policy = rollout.tokens.policy_mask_BC.bool()
    torch.testing.assert_close(logp[policy], rollout.sampling_logprobs_BC[policy], atol=1e-5, rtol=0)


ONLINE = [name for name, cls in METHODS.items() if cls.online]


def test_every_online_method_is_offered_conversations_or_refuses(tiny_home):
    for name in METHODS:
        config = _config(tiny_home, f"train.method={name}")
        if METHODS[name].online:
            method_class(config)
        else:
            with pytest.raises(GrpokitError, match="fixed dataset"):
                method_class(config)


@pytest.mark.parametrize("method", ONLINE)
def test_every_online_method_trains_on_conversations_and_never_on_tool_results(tiny_home, tmp_path, method,
                                                                               monkeypatch):
    """Two steps with the calculator; every loss sees a mask that is 0 on every environment token."""
    import grpokit.losses as losses

    seen = []

    def spy(name):
        original = getattr(losses, name)

        def wrapped(*args, **kwargs):
            seen.append(name)
            return original(*args, **kwargs)
        return wrapped

    masks = []
    from grpokit.batching import TokenBatch

    original_trained = TokenBatch.trained_mask_BC

    def recording(self):
        mask = original_trained.fget(self)
        if self.policy_mask_BC is not None:
            masks.append((mask.clone(), self.completion_mask_BC.clone(), self.policy_mask_BC.clone()))
        return mask
    monkeypatch.setattr(TokenBatch, "trained_mask_BC", property(recording))
    out = tmp_path / method
    config = load_config(None, [
        f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
        "data.max_eval_examples=2", "sampling.group_size=2", "sampling.max_new_tokens=8",
        "sampling.prompts_per_step=2", "train.steps=2", "train.progress=false", f"train.out_dir={out}",
        f"train.method={method}", "verify.isolate=false", f"env.name={TOOLS}:VowelEnvironment", "env.max_turns=3",
        "env.max_tokens=60", "grpo.beta=0.04", "online.pass_reward=total", "online.pass_threshold=1",
        "rewards=[accuracy]"])
    summary = train(config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("phase") == "train"]
    assert len(train_rows) == 2 and all("turns_per_rollout" in r and "env_token_fraction" in r for r in train_rows)
    assert any(r["env_token_fraction"] > 0 for r in train_rows)
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert all("env" in r and r["rewards"]["env"] == r["env"]["tool_calls"] for r in rollouts)
    assert masks, "no loss read a multi-turn mask"
    for trained, attended, policy in masks:
        assert (trained[policy == 0] == 0).all()  # an environment token is never trained on
        assert (trained <= attended).all()
    assert "eval_tool_call_rate" in summary["eval_after"] or "tool_call_rate" in summary["eval_after"]


def test_the_warm_up_does_not_train_on_tool_results_in_demonstrations(tiny_model_and_tokenizer, tiny_home):
    from grpokit.batching import encode_pairs

    _, tokenizer = tiny_model_and_tokenizer
    envs = EnvironmentFactory(_config(tiny_home), tokenizer)
    demo = "<tool>calculator(37*48)</tool><result>1776</result><answer>1776</answer>"
    batch = encode_pairs(tokenizer, ["Q"], [demo], envs.context_spans)
    ids, policy = batch.completion_ids_BC[0].tolist(), batch.policy_mask_BC[0].tolist()
    assert tokenizer.decode([i for i, p in zip(ids, policy) if p == 0]) == "<result>1776</result>"
    assert tokenizer.decode([i for i, p in zip(ids, policy) if p == 1], skip_special_tokens=True) == \
        "<tool>calculator(37*48)</tool><answer>1776</answer>"
    assert policy[-1] == 1  # EOS is the policy's
    envs.close()


def test_doctor_shows_a_conversation_with_the_environments_tokens_marked(tiny_home):
    from grpokit.doctor import format_report, run_doctor

    config = load_config(None, [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}",
                                f"env.name={TOOLS}:ChattyVowelEnvironment", "sampling.group_size=2",
                                "sampling.max_new_tokens=8", "env.max_turns=3", "env.max_tokens=40",
                                "verify.isolate=false"])
    report = run_doctor(config, num_groups=2)
    assert "[[env: <result>ok</result>]]" in report.conversation["text"]
    text = format_report(report)
    assert "== one conversation (custom format" in text and "offered: vowels end turns" in text
    assert "turns_per_rollout" in text


def test_the_tool_task_is_disjoint_and_calls_the_tool_on_a_share_of_demonstrations():
    from grpokit.tiny.tool_task import make_tool_splits

    splits = make_tool_splits(eval_size=200)
    assert len(splits["eval"]) == 200 and len(splits["train"]) == 90 * 90 - 200
    assert not {r["prompt"] for r in splits["eval"]} & {r["prompt"] for r in splits["train"]}
    rate = sum("<tool>" in r["completion"] for r in splits["train"]) / len(splits["train"])
    assert 0.27 < rate < 0.33
    for row in splits["train"][:50]:
        a, b = (int(x) for x in row["prompt"].removeprefix("What is ").removesuffix("?").split(" * "))
        assert row["answer"] == str(a * b) and row["completion"].endswith(f"<answer>{a * b}</answer>")


def test_a_killed_multi_turn_run_resumes_to_the_same_result(tiny_home, tmp_path):
    """As tests/test_resume.py, with conversations: the kill reward ends the process group mid-run."""
    from test_resume import GROUP, PROMPTS, _assert_same_run, _cli, _config_text

    config_file = tmp_path / "resume_tools.yaml"
    config_file.write_text(_config_text(tiny_home) + f"env: {{name: '{TOOLS}:VowelEnvironment', max_turns: 3, "
                                                     "max_tokens: 40}\n")
    reference = tmp_path / "uninterrupted"
    train(load_config(config_file, [f"train.out_dir={reference}"]))
    assert any(json.loads(line)["env"]["env_tokens"] for line in (reference / "rollouts.jsonl").open())
    out = tmp_path / "run"
    env = {"GRPOKIT_TEST_KILL_COUNTER": str(tmp_path / "calls"),
           "GRPOKIT_TEST_KILL_AT_CALL": str(3 * PROMPTS * GROUP + 1)}
    killed = _cli(config_file, out, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _cli(config_file, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(out, reference)


def test_the_eval_command_holds_conversations_as_training_evaluates(tiny_home, tmp_path, capsys):
    """`grpokit eval` with an env section answers in conversations, judged by the environment's reward
    (online.pass_reward=env): its numbers equal the trainer's evaluation of the same model at step 0."""
    from grpokit.cli import main

    overrides = [f"env.name={TOOLS}:EveryCharacterEnvironment", "env.max_turns=3", "env.max_tokens=60",
                 "online.pass_reward=env", "online.pass_threshold=2", "rewards=[accuracy]", "verify.isolate=false",
                 "sampling.max_new_tokens=8", "eval.max_new_tokens=8"]
    out = tmp_path / "run"
    summary = train(load_config(None, [
        f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
        "data.max_eval_examples=6", "sampling.group_size=2", "sampling.prompts_per_step=2", "train.steps=1",
        "train.progress=false", f"train.out_dir={out}", *overrides]))
    before = summary["eval_before"]
    assert main(["eval", str(tiny_home["model"]), str(tiny_home["eval"]), "--max-examples", "6", *overrides,
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tool_call_rate"] == before["tool_call_rate"] > 0
    assert result["accuracy"] == before["accuracy"] and result["mean_length"] == before["mean_length"]
    # the pass rule read the environment's reward: a conversation passes when it reached the second call
    assert 0 < result["accuracy"] <= result["tool_call_rate"]
