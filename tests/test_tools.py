"""Tools besides the sandbox (issue 26): plug-ins by reference and their listing in the prompt, and the
SandboxFusion client against a local stand-in server (its answers, its failures)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from observe_r1.config import ToolsConfig
from observe_r1.models.inputs import ChatEncoder
from observe_r1.tools.base import ToolCall, ToolContext, run_call, schema_of
from observe_r1.tools.builtin import make_tools

PLUGIN = '''
def lookup(word, context=None):
    """Look a word up in a tiny dictionary."""
    return {"cat": "a small feline"}.get(word, "unknown")


lookup.parameters = {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}


def broken(**kwargs):
    """Always fails."""
    raise RuntimeError("the tool broke")
'''


def test_a_plugin_tool_is_loaded_listed_and_called(tmp_path, tiny_model_dir):
    path = tmp_path / "my_tools.py"
    path.write_text(PLUGIN)
    tools = make_tools(ToolsConfig(names=[f"{path}:lookup", f"{path}:broken"]))
    record, image = run_call(ToolCall("lookup", {"word": "cat"}), tools, ToolContext(), 100)
    assert record.output == "a small feline" and not record.error and image is None
    record, _ = run_call(ToolCall("broken", {}), tools, ToolContext(), 100)
    assert record.kind == "tool_error" and "the tool broke" in record.output
    record, _ = run_call(ToolCall("lookup", {"word": 3}), tools, ToolContext(), 100)
    assert record.kind == "bad_arguments"
    encoder = ChatEncoder.from_pretrained(tiny_model_dir)
    encoder.tools = [schema_of(t) for t in tools.values()]
    text = encoder.render([{"role": "user", "content": "hi"}])
    assert (
        '"name": "lookup"' in text and "<tool_call>" in text
    )  # Qwen2.5-VL's template ignores tools=: as text
    with pytest.raises(ValueError, match="tool 'nope': not a built-in \\(python, sandbox_fusion, crop\\)"):
        make_tools(ToolsConfig(names=["nope"]))


class FakeFusion(BaseHTTPRequestHandler):
    """SandboxFusion's /run_code: the answer depends on the code it is sent."""

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        code = request["code"]
        if code == "crash":
            self.send_response(500)
            self.end_headers()
            return
        if code == "garbage":
            body = b"not json"
        elif code == "slow":
            body = json.dumps(
                {
                    "status": "Failed",
                    "run_result": {
                        "status": "TimeLimitExceeded",
                        "stdout": "",
                        "stderr": "",
                        "return_code": None,
                    },
                }
            ).encode()
        elif code == "refused":
            body = json.dumps({"status": "SandboxError", "message": "no sandbox left"}).encode()
        else:
            body = json.dumps(
                {
                    "status": "Success",
                    "run_result": {"status": "Finished", "stdout": "42\n", "stderr": "", "return_code": 0},
                }
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fusion_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeFusion)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_sandbox_fusion_answers_and_failures(fusion_url):
    tool = make_tools(ToolsConfig(names=["sandbox_fusion"], sandbox_fusion_url=fusion_url, wall_s=2))[
        "python"
    ]
    assert tool({"code": "print(6 * 7)"}, ToolContext()).text == "42\n"
    for code, words in (
        ("crash", "HTTP 500"),
        ("garbage", "unreachable"),
        ("refused", "no sandbox left"),
        ("slow", "timed out"),
    ):
        out = tool({"code": code}, ToolContext())
        assert out.error and (words in out.error or words in out.text), (code, out)
    assert tool({"code": "slow"}, ToolContext()).timeout
    dead = make_tools(
        ToolsConfig(names=["sandbox_fusion"], sandbox_fusion_url="http://127.0.0.1:9", wall_s=1)
    )
    out = dead["python"]({"code": "print(1)"}, ToolContext())
    assert out.error and "unreachable" in out.text
    with pytest.raises(ValueError, match="sandbox_fusion_url"):
        make_tools(ToolsConfig(names=["sandbox_fusion"]))
