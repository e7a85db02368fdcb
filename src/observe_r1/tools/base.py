"""Tools a policy may call during a rollout: the protocol, the registry, and checked calls.

A tool is any object with a `name`, a `description`, a JSON schema of its arguments (`parameters`) and
`__call__(args, context) -> str | PIL.Image | ToolOutput`. Built in: `python` (tools.python: a sandbox), `crop`
(tools.crop: a region of the prompt's image, returned as a new image), `sandbox_fusion` (tools.fusion: a
SandboxFusion server); a plug-in is named like a reward plug-in, `path/file.py:fn` or `package.module:fn`
(a function: its name, its docstring as the description, its `parameters` attribute as the schema).

`run_call` never raises: a malformed call (bad JSON, an unknown tool, arguments that do not fit the
schema) or a tool that fails becomes an error observation the model reads, counted by kind.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from observe_r1.rewards.terms import load_function

log = logging.getLogger(__name__)
JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                           "boolean": (bool,), "array": (list,), "object": (dict,)}  # fmt: skip


@dataclass
class ToolContext:
    """What a call may read besides its arguments: the prompt's images and the sample's id."""

    images: Sequence[Image.Image] = ()
    sample_id: str = "?"


@dataclass
class ToolOutput:
    """A tool's answer: text, an image, or both. `error` set: the call failed (the text tells the model why);
    `timeout`: it ran out of time."""

    text: str = ""
    image: Image.Image | None = None
    error: str = ""
    timeout: bool = False


class Tool(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]

    def __call__(self, args: dict[str, Any], context: ToolContext) -> Any: ...


@dataclass(frozen=True)
class ToolCall:
    """A call as the model wrote it, parsed: `name` and `args`, or `error` when it could not be read."""

    name: str
    args: Any = field(default_factory=dict)  # checked against the tool's schema when it is run
    error: str = ""


@dataclass
class CallRecord:
    """One call and what came of it (rewards see these: the `tool_calls` column)."""

    name: str
    args: Any
    output: str
    image: bool = False
    error: str = ""  # "" = it worked
    kind: str = ""  # parse / unknown_tool / bad_arguments / tool_error / timeout
    seconds: float = 0.0

    def as_row(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.args, "output": self.output, "image": self.image,
                "error": self.error, "kind": self.kind}  # fmt: skip


class FunctionTool:
    """A plain function as a tool: `fn(**args)` (or `fn(**args, context=...)` if it names `context`)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.name = getattr(fn, "tool_name", fn.__name__)
        self.description = (fn.__doc__ or self.name).strip().split("\n\n")[0]
        self.parameters = getattr(fn, "parameters", {"type": "object", "properties": {}})

    def __call__(self, args: dict[str, Any], context: ToolContext) -> Any:
        try:
            wants_context = "context" in self.fn.__code__.co_varnames
        except AttributeError:
            wants_context = False
        return self.fn(**args, context=context) if wants_context else self.fn(**args)


def load_tool(ref: str, builtins: tuple[str, ...] = ()) -> Tool:
    """A plug-in tool from `path/file.py:fn` or `package.module:fn`: an object with the protocol's attributes
    is used as it is, a plain function is wrapped (`FunctionTool`). `builtins`: the names an error lists."""
    obj = load_function(ref, kind="tool", builtins=builtins)
    if all(hasattr(obj, a) for a in ("name", "description", "parameters")):
        return obj  # type: ignore[return-value]
    return FunctionTool(obj)


def schema_of(tool: Tool) -> dict[str, Any]:
    """The tool as chat templates take it (`tools=`): OpenAI's function layout."""
    return {"type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters}}  # fmt: skip


def check_arguments(args: Any, schema: dict[str, Any]) -> str:
    """ "" when `args` fit the schema's top level (an object, its required keys, the types of the properties
    it declares, no others unless allowed), else what is wrong, in words for the model."""
    if not isinstance(args, dict):
        return f"arguments must be a JSON object, not {type(args).__name__}"
    properties = schema.get("properties", {})
    missing = [k for k in schema.get("required", []) if k not in args]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    for key, value in args.items():
        if key not in properties:
            if schema.get("additionalProperties", True) is False:
                return f"unknown argument {key!r}; expected: {', '.join(properties) or 'none'}"
            continue
        wanted = properties[key].get("type")
        types = JSON_TYPES.get(wanted, (object,)) if isinstance(wanted, str) else (object,)
        if not isinstance(value, types) or (wanted in ("integer", "number") and isinstance(value, bool)):
            return f"argument {key!r} must be {wanted}, not {type(value).__name__}"
    return ""


def run_call(
    call: ToolCall, tools: dict[str, Tool], context: ToolContext, max_chars: int
) -> tuple[CallRecord, Image.Image | None]:
    """Run one parsed call; never raises. Returns its record and the image it returned, if any."""

    def failed(kind: str, message: str) -> tuple[CallRecord, None]:
        return CallRecord(call.name, call.args, f"Error: {message}", error=message, kind=kind), None

    if call.error:
        return failed("parse", call.error)
    tool = tools.get(call.name)
    if tool is None:
        return failed("unknown_tool", f"unknown tool {call.name!r}; available: {', '.join(tools) or 'none'}")
    problem = check_arguments(call.args, tool.parameters)
    if problem:
        return failed("bad_arguments", f"{call.name}: {problem}")
    started = time.perf_counter()
    try:
        got = tool(call.args, context)
    except Exception as e:  # noqa: BLE001 - a tool's failure is an observation for the model, never a crash
        log.debug("tool %s failed", call.name, exc_info=True)
        return failed("tool_error", f"{call.name} failed: {type(e).__name__}: {e}")
    out = (
        got
        if isinstance(got, ToolOutput)
        else ToolOutput(image=got)
        if isinstance(got, Image.Image)
        else ToolOutput(text=str(got))
    )
    text = truncate(out.text, max_chars)
    kind = "timeout" if out.timeout else "tool_error" if out.error else ""
    seconds = round(time.perf_counter() - started, 3)
    return CallRecord(call.name, call.args, text, out.image is not None, out.error, kind, seconds), out.image


def truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n... [{len(text) - max_chars} more characters cut]"


def parse_json_call(text: str) -> ToolCall:
    """A `{"name": ..., "arguments": {...}}` call (Hermes / Qwen2.5 `<tool_call>` contents)."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        return ToolCall("?", error=f"the tool call is not valid JSON ({e})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall("?", error='a tool call is {"name": ..., "arguments": {...}}')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return ToolCall(obj["name"], error="the arguments are not valid JSON")
    return ToolCall(obj["name"], args)
