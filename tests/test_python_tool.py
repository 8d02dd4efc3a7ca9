"""The built-in `python` tool: model-written code runs only in the sandbox, and what the model reads
back is the program's output, or the end of its error, or why it was stopped."""

import pytest

from grpokit.config import load_config
from grpokit.envs import EnvironmentFactory
from grpokit.envs.tools import PYTHON_TOOL_SECONDS, python, tool_schema
from tests.test_sandbox import REFUSAL  # a confined test program, started once

needs_sandbox = pytest.mark.skipif(REFUSAL is not None, reason=f"the sandbox refuses on this machine: {REFUSAL}")


@needs_sandbox
def test_the_model_reads_what_the_program_printed():
    assert python("print(37*48)") == "1776"
    assert python("for i in range(3):\n    print(i)") == "0\n1\n2"
    assert python("x = 1") == "[no output]"


@needs_sandbox
def test_an_error_shows_its_last_traceback_lines_and_exit_status():
    reply = python("print('before')\n1/0")
    lines = reply.splitlines()
    assert lines[0] == "before"
    assert lines[-2] == "ZeroDivisionError: division by zero"
    assert lines[-1] == "[exit 1]"
    assert len(lines) == 1 + 3 + 1  # stdout, the traceback's last 3 lines, the status


@needs_sandbox
def test_the_program_cannot_reach_the_network_the_system_or_the_trainers_environment(monkeypatch):
    net = python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)")
    assert "OSError" in net or "unreachable" in net.lower(), net
    assert net.endswith("[exit 1]")
    write = python("open('/etc/grpokit_escape', 'w').write('x')")
    assert "Read-only file system" in write or "Permission denied" in write, write
    monkeypatch.setenv("GRPOKIT_TEST_SECRET", "hunter2")  # e.g. an API key of the training job
    assert python("import os\nprint(os.environ.get('GRPOKIT_TEST_SECRET'))") == "None"


@needs_sandbox
def test_a_program_that_never_ends_is_stopped_and_says_so():
    reply = python("while True:\n    pass")
    assert reply.startswith("[timed out after") or "killed by SIGXCPU" in reply, reply
    assert PYTHON_TOOL_SECONDS < load_config(None, []).env.tool_timeout  # reported before the worker is killed


def test_it_can_be_shown_to_a_chat_template():
    schema = tool_schema(python)
    assert schema["function"]["name"] == "python"
    assert schema["function"]["parameters"]["required"] == ["code"]
    assert "print" in schema["function"]["parameters"]["properties"]["code"]["description"]


@needs_sandbox
def test_a_tag_call_runs_in_the_tool_worker(tiny_model_and_tokenizer, tiny_home):
    _, tokenizer = tiny_model_and_tokenizer
    config = load_config(None, [f"model.path={tiny_home['model']}", "env.name=tools", "env.tools=[python]",
                                "env.format=tags"])
    envs = EnvironmentFactory(config, tokenizer)
    try:
        env = envs.new()
        env.reset({})
        reply = env.step("Let me check. <tool>python(print(sum(i*i for i in range(10))))</tool>")
        assert reply == "<result>285</result>"
        assert env.stats() == {"tool_calls": 1}
    finally:
        envs.close()
