"""The built-in tools: `python` (a local sandbox), `sandbox_fusion` (a SandboxFusion server's `run_code`,
the service verl uses) and `crop` (thinking with images: a region of the prompt's image, as a new image).
`make_tools` builds the configured ones, plug-ins included."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from PIL import Image

from observe_r1.config import ToolsConfig
from observe_r1.tools.base import Tool, ToolContext, ToolOutput, load_tool
from observe_r1.tools.sandbox import Limits, PythonSandbox, RunResult

CODE_SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "Python source; print what you want to see"}},
    "required": ["code"],
}
STATUS_TEXT = {
    "timeout": "timed out after {wall_s:g} s",
    "cpu_limit": "ran out of CPU time ({cpu_s:g} s)",
    "too_many_processes": "started too many processes (at most {max_processes})",
    "disk_full": "wrote more than {disk_mb} MB",
    "file_too_large": "wrote a file over {file_mb} MB",
    "killed": "was killed",
    "error": "could not be run",
}


def code_output(
    stdout: str, stderr: str, exit_code: int | None, failure: str = "", timeout: bool = False
) -> ToolOutput:
    """What the model reads after running code: its output, and why it failed if it did (the last lines of
    the traceback)."""
    if failure:
        return ToolOutput(
            text=(stdout + f"\nError: the code {failure}").strip(), error=failure, timeout=timeout
        )
    if exit_code not in (0, None):
        tail = "\n".join(stderr.strip().splitlines()[-3:])
        return ToolOutput(text=(stdout + "\n" + tail).strip(), error=f"exit code {exit_code}")
    return ToolOutput(text=stdout if stdout.strip() else "(no output)")


class PythonTool:
    """`python`: runs the code in `tools.sandbox` isolation (bubblewrap or a process) with the limits."""

    name = "python"
    description = "Run Python code and read what it prints. Nothing is kept between calls."
    parameters = CODE_SCHEMA

    def __init__(self, sandbox: PythonSandbox):
        self.sandbox = sandbox

    def __call__(self, args: dict[str, Any], context: ToolContext) -> ToolOutput:
        r: RunResult = self.sandbox.run(args["code"])
        if r.status != "ok":
            why = STATUS_TEXT.get(r.status, r.status).format(**vars(self.sandbox.limits))
            return code_output(r.stdout, r.stderr, r.exit_code, why + (f": {r.error}" if r.error else ""),
                               timeout=r.status in ("timeout", "cpu_limit"))  # fmt: skip
        return code_output(r.stdout, r.stderr, r.exit_code)


class SandboxFusionTool:
    """`sandbox_fusion`: POST {url}/run_code to a SandboxFusion server. A connection error, a non-200 answer
    or an answer that is not SandboxFusion's is an error observation, never an exception."""

    name = "python"  # the model calls it as it would call the local one
    description = PythonTool.description
    parameters = CODE_SCHEMA

    def __init__(self, url: str, limits: Limits):
        self.url, self.limits = url.rstrip("/") + "/run_code", limits

    def __call__(self, args: dict[str, Any], context: ToolContext) -> ToolOutput:
        body = json.dumps({"code": args["code"], "language": "python", "run_timeout": self.limits.wall_s,
                           "memory_limit_MB": self.limits.memory_mb}).encode()  # fmt: skip
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.limits.wall_s + 10) as response:
                answer = json.loads(response.read(1 << 22))
        except urllib.error.HTTPError as e:
            return ToolOutput(text="Error: the code server failed", error=f"HTTP {e.code} from {self.url}")
        except (OSError, ValueError) as e:  # URLError, timeouts and bad JSON
            return ToolOutput(text="Error: the code server is unreachable", error=f"{self.url}: {e}")
        run = answer.get("run_result") if isinstance(answer, dict) else None
        if not isinstance(run, dict):
            message = answer.get("message", "") if isinstance(answer, dict) else ""
            return ToolOutput(
                text="Error: the code could not be run", error=f"SandboxFusion: {message or answer}"
            )
        if run.get("status") == "TimeLimitExceeded":
            return code_output(
                str(run.get("stdout") or ""), "", None, f"timed out after {self.limits.wall_s:g} s", True
            )
        return code_output(str(run.get("stdout") or ""), str(run.get("stderr") or ""), run.get("return_code"))


class CropTool:
    """`crop`: {"bbox": [x1, y1, x2, y2]} in pixels of the prompt's image (or fractions 0-1 of its size), and
    optionally "image": its index; returns the region, enlarged to at least `min_side` pixels a side and
    at most `max_pixels` (the encoder's limits apply again when it becomes a turn's image)."""

    name = "crop"
    description = "Zoom into a region of the image: returns the crop [x1, y1, x2, y2] as a new, larger image."
    parameters = {
        "type": "object",
        "properties": {
            "bbox": {"type": "array", "description": "[x1, y1, x2, y2], pixels or fractions of the size"},
            "image": {"type": "integer", "description": "which image of the prompt (0 = the first)"},
        },
        "required": ["bbox"],
    }

    def __init__(self, min_side: int = 56, max_pixels: int = 1 << 20):
        self.min_side, self.max_pixels = min_side, max_pixels

    def __call__(self, args: dict[str, Any], context: ToolContext) -> ToolOutput:
        index = args.get("image", 0)
        if not 0 <= index < len(context.images):
            return ToolOutput(text=f"Error: there is no image {index}", error="no such image")
        image = context.images[index]
        box = args["bbox"]
        if len(box) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            return ToolOutput(text="Error: bbox is [x1, y1, x2, y2], four numbers", error="bad bbox")
        w, h = image.size
        if all(0 <= v <= 1 for v in box) and any(isinstance(v, float) for v in box):
            box = [box[0] * w, box[1] * h, box[2] * w, box[3] * h]
        x1, y1, x2, y2 = (round(v) for v in box)
        if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
            return ToolOutput(text=f"Error: bbox {args['bbox']} is not inside the {w}x{h} image with x1 < x2 and "
                                   f"y1 < y2", error="bbox outside the image")  # fmt: skip
        crop = image.crop((x1, y1, x2, y2))
        scale = max(1.0, self.min_side / min(crop.size))
        scale = min(scale, (self.max_pixels / (crop.size[0] * crop.size[1])) ** 0.5)
        if scale != 1.0:
            size = (max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale)))
            crop = crop.resize(size, Image.Resampling.BICUBIC)
        return ToolOutput(text=f"crop [{x1}, {y1}, {x2}, {y2}] of image {index}", image=crop)


BUILTIN_TOOLS = ("python", "sandbox_fusion", "crop")


def make_tools(cfg: ToolsConfig) -> dict[str, Tool]:
    """The configured tools by the name the model calls them with."""
    limits = Limits(cfg.cpu_s, cfg.wall_s, cfg.memory_mb, cfg.file_mb, cfg.disk_mb, cfg.max_processes,
                    cfg.max_output_bytes)  # fmt: skip
    tools: dict[str, Tool] = {}
    for name in cfg.names:
        tool: Tool
        if name == "python":
            tool = PythonTool(PythonSandbox(cfg.sandbox, limits, cfg.python))
        elif name == "sandbox_fusion":
            if not cfg.sandbox_fusion_url:
                raise ValueError("tools.names has sandbox_fusion: set tools.sandbox_fusion_url")
            tool = SandboxFusionTool(cfg.sandbox_fusion_url, limits)
        elif name == "crop":
            tool = CropTool(max_pixels=cfg.crop_max_pixels)
        else:
            tool = load_tool(name, BUILTIN_TOOLS)
        if tool.name in tools:
            raise ValueError(f"tools.names: two tools are called {tool.name!r}")
        tools[tool.name] = tool
    return tools
