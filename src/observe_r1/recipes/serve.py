"""`observe-r1 serve MODEL`: a model behind OpenAI's chat-completions route, for a judge on another device or
machine (`reward.judge.url`), and for trying a checkpoint with any OpenAI client.

Routes: POST /v1/chat/completions (text messages; `max_tokens`, `temperature` (0 = greedy), `seed`), GET
/v1/models. One request at a time (HF generate), on the model's device; a request is answered 400 when it is
not one this server can do (image parts, n > 1, a body over 8 MiB), never by a crash. For throughput, serve
with vLLM (`vllm serve MODEL`): the judge speaks the same route.
"""

from __future__ import annotations

import json
import logging
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import torch

from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import frozen, load_model
from observe_r1.rollout.base import PromptBatch, SamplingParams
from observe_r1.rollout.hf import HFRollout
from observe_r1.training import runtime

log = logging.getLogger(__name__)

MAX_BODY = 8 << 20


class BadRequest(ValueError):
    pass


class ChatServer(HTTPServer):
    request_queue_size = 128  # clients that send many requests at once wait in the queue

    def __init__(self, address: tuple[str, int], model_dir: str, name: str, max_tokens: int, dtype: str):
        super().__init__(address, ChatHandler)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.backend = HFRollout(
            frozen(load_model(model_dir)).to(device), ChatEncoder.from_pretrained(model_dir)
        )
        self.name, self.max_tokens, self.dtype, self.device = name, max_tokens, dtype, device

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("`messages` must be a non-empty list")
        chat = [{"role": m.get("role"), "content": text_of(m)} for m in messages]
        if body.get("n", 1) != 1:
            raise BadRequest("n must be 1")
        max_tokens = min(int(body.get("max_tokens") or self.max_tokens), self.max_tokens)
        temperature = float(body.get("temperature", 1.0))
        prompt = self.backend.encoder.encode(chat)
        sampling = SamplingParams(
            n=1, temperature=temperature or 1.0, max_new_tokens=max_tokens, greedy=temperature == 0
        )
        batch = PromptBatch([prompt], [0], seed=int(body.get("seed", 0)))
        with torch.no_grad(), runtime.autocast(self.device, self.dtype, generation=True):
            rollout = self.backend.generate(batch, sampling)
        used = int(rollout.lengths[0])
        return {
            "id": f"chatcmpl-{time.time_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": rollout.texts[0]},
                    "finish_reason": "length" if bool(rollout.truncated[0]) else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt.input_ids),
                "completion_tokens": used,
                "total_tokens": len(prompt.input_ids) + used,
            },
        }


def text_of(message: Any) -> str:
    """A message's text: string content, or text parts (OpenAI's content list); anything else is refused."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str) or message.get("role") not in ("system", "user", "assistant"):
        raise BadRequest("this server takes text messages only: {role: system|user|assistant, content: text}")
    return content


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self.reply(200, {"object": "list", "data": [{"id": self.server.name, "object": "model"}]})
        else:
            self.reply(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self.reply(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            size = int(self.headers.get("Content-Length", "0"))
            if not 0 < size <= MAX_BODY:
                raise BadRequest(f"the body must be 1 byte to {MAX_BODY} bytes")
            body = json.loads(self.rfile.read(size))
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            self.reply(200, self.server.complete(body))
        except (BadRequest, ValueError, TypeError) as e:
            self.reply(400, {"error": {"message": str(e), "type": "invalid_request_error"}})

    def reply(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s " + format, self.address_string(), *args)


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "",
    max_tokens: int = 1024,
    dtype: str = "bfloat16",
    ready: Any = print,
) -> None:
    """Serve until interrupted; `ready(line)` is told the address once the model is loaded."""
    server = ChatServer((host, port), model_dir, name or model_dir, max_tokens, dtype)
    ready(f"serving {model_dir} on http://{host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
