"""Multi-turn rollouts with tools (`rollout.multi_turn`): generate until a tool call, run it, append its result
as an observation, continue; around either backend (HF generate or vLLM), which only ever generates.

One response, turn by turn (docs/tools.md):
  generate (the budget left, stopping at the end token, `</code>` in the code layout, or the hint marker)
  -> a call? (chat: <tool_call>{"name": ..., "arguments": ...}</tool_call> in a finished turn; code: a
     <code>...</code> block) -> run the calls (a thread pool; `tools.base.run_call` never raises)
  -> the observation, rendered as the chat template renders tool turns (chat) or as <output>...</output>
     (code); an image a tool returned becomes the turn's image placeholders + pixels
  -> continue, until a turn without a call, `max_turns` model turns or `max_total_tokens`.
START's hint-infer: when a response that has not called a tool closes its thinking (`hint_marker`), the
marker is taken back and a hint ("Wait, maybe using Python here is a good idea.") is appended instead.

The Rollout it returns has every token in `completion_ids` (the trainer scores the whole sequence, so later
turns see the observations) and a `loss_mask` of the model's own tokens: observations and hints get no loss,
no KL, no entropy and count in no response length. The text the rewards grade is the model's own
(`Trace.model_text`): a tool's output cannot answer for it (code that prints `<answer>5</answer>`).

Determinism: the first turn samples exactly as a single-turn rollout (same seeds), each later turn with a
seed of (response seed, turn); tools see the same inputs, so the same seed gives the same trajectory with
the HF backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from observe_r1.config import Config, MultiTurnConfig, ToolsConfig
from observe_r1.models.inputs import ChatEncoder, EncodedPrompt
from observe_r1.rollout.base import (
    PromptBatch,
    Rollout,
    RolloutBackend,
    SamplingParams,
    Trace,
    padded,
    with_trace_images,
)
from observe_r1.rollout.hf import _GOLDEN, mix64, response_seeds
from observe_r1.tools.base import CallRecord, Tool, ToolCall, ToolContext, parse_json_call, run_call
from observe_r1.tools.builtin import make_tools

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
CODE = re.compile(r"<code>(.*?)</code>", re.DOTALL)
CODE_END = "</code>"
OUTPUT_BLOCK = re.compile(r"<output>\n.*?\n</output>\n", re.DOTALL)  # an observation of the code layout
MAX_CALLS_PER_TURN = 4
SENTINEL = "\x00observe-r1-{}\x00"


@dataclass
class _Response:
    """One response being built."""

    prompt: EncodedPrompt
    images: list  # the prompt's PIL images, then the tools'
    group_id: int
    seed: torch.Tensor  # int64
    tokens: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)  # 1 = the model's token
    logprobs: list[float] = field(default_factory=list)
    trace: Trace = field(default_factory=Trace)
    done: bool = False
    truncated: bool = False

    def add(self, ids: list[int], model: bool, logprobs: list[float] | None = None) -> None:
        self.tokens += ids
        self.mask += [int(model)] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)


def with_tools(cfg: Config, backend: RolloutBackend, encoder: ChatEncoder) -> RolloutBackend:
    """`backend` itself, or with `rollout.multi_turn` on, the multi-turn rollout around it."""
    if not cfg.rollout.multi_turn.enabled:
        return backend
    return MultiTurnRollout(backend, encoder, make_tools(cfg.tools), cfg.rollout.multi_turn, cfg.tools)


def reference_tokens(
    text: str, encoder: ChatEncoder, observations: bool = True
) -> tuple[list[int], list[int]]:
    """A reference response tokenised: (token ids, 1 for the model's tokens). With `observations` (the code
    layout), as a multi-turn rollout builds it: each `<output>` block is an observation, tokenised apart and
    without loss, so a cold start on tool-using trajectories does not learn to predict the tools' outputs."""
    ids: list[int] = []
    mask: list[int] = []
    at = 0
    for block in [*(OUTPUT_BLOCK.finditer(text) if observations else ()), None]:
        end = block.start() if block else len(text)
        for piece, model in ((text[at:end], 1), ("" if block is None else block.group(0), 0)):
            if piece:
                got = encoder.tokenizer(piece, add_special_tokens=False, split_special_tokens=not model)[
                    "input_ids"
                ]
                ids += got
                mask += [model] * len(got)
        at = block.end() if block else end
    return ids, mask


class MultiTurnRollout:
    """A rollout backend that calls tools between the turns another backend generates."""

    def __init__(self, backend: RolloutBackend, encoder: ChatEncoder, tools: dict[str, Tool],
                 mt: MultiTurnConfig, tools_cfg: ToolsConfig):  # fmt: skip
        self.backend, self.encoder, self.tools, self.mt = backend, encoder, tools, mt
        self.max_chars, self.pool = tools_cfg.max_output_chars, ThreadPoolExecutor(tools_cfg.workers)
        self.eos = set(getattr(backend, "eos_token_ids", [encoder.tokenizer.eos_token_id]))

    def update_weights(self, model: Any) -> None:
        self.backend.update_weights(model)

    def generate(self, batch: PromptBatch, sampling: SamplingParams) -> Rollout:
        n = 1 if sampling.greedy else sampling.n
        budget = self.mt.max_total_tokens or sampling.max_new_tokens
        seeds = response_seeds(batch, n)
        states = [_Response(batch.prompts[i // n], list(batch.images[i // n]) if batch.images else [],
                            batch.group_ids[i // n], seeds[i]) for i in range(len(batch.prompts) * n)]  # fmt: skip
        first = self.backend.generate(batch, replace(sampling, max_new_tokens=budget, stop=self._stops(True)))
        self._take_turn(states, first, list(range(len(states))), budget)
        for turn in range(1, self.mt.max_turns + self.mt.max_hints):
            pending = [i for i, s in enumerate(states) if not s.done]
            if not pending:
                break
            for stop, group in self._by_stops(states, pending).items():
                cont = PromptBatch(
                    [self._continuation(states[i]) for i in group], [states[i].group_id for i in group], batch.seed,
                    [states[i].images for i in group],
                    response_seeds=torch.stack([mix64(states[i].seed + torch.tensor(turn) * _GOLDEN) for i in group]),
                    videos=[batch.videos[i // n] for i in group] if batch.videos else None,
                )  # fmt: skip
                left = max(budget - min(len(states[i].tokens) for i in group), 1)
                got = self.backend.generate(cont, replace(sampling, n=1, max_new_tokens=left, stop=stop))
                self._take_turn(states, got, group, budget)
        for s in states:  # out of turns with a call still answered: the response ends there
            if not s.done:
                s.done = s.truncated = True
        return self._rollout(batch, n, states, sampling.max_new_tokens)

    # ------------------------------------------------------------ one turn

    def _stops(self, hints_left: bool) -> tuple[str, ...]:
        stops = (CODE_END,) if self.mt.layout == "code" else ()
        return stops + ((self.mt.hint_marker,) if hints_left and self.mt.hints else ())

    def _hints_left(self, s: _Response) -> bool:
        return bool(self.mt.hints) and s.trace.hints < self.mt.max_hints and not s.trace.calls

    def _by_stops(self, states: list[_Response], pending: list[int]) -> dict[tuple[str, ...], list[int]]:
        groups: dict[tuple[str, ...], list[int]] = {}
        for i in pending:
            groups.setdefault(self._stops(self._hints_left(states[i])), []).append(i)
        return groups

    def _continuation(self, s: _Response) -> EncodedPrompt:
        """The prompt a response continues from: the prompt, every token so far, every image so far."""
        return with_trace_images(s.prompt, s.trace, s.tokens)

    def _take_turn(self, states: list[_Response], got: Rollout, rows: list[int], budget: int) -> None:
        """Append each row's new tokens to its response, then run the calls the turn made, all at once."""
        calls: list[tuple[int, list[ToolCall]]] = []
        for row, i in enumerate(rows):
            s = states[i]
            ids = got.completion_ids[row, : int(got.lengths[row])].tolist()
            logprobs = got.logprobs[row, : len(ids)].tolist() if got.logprobs is not None else None
            ids, ended, stop = self._cut(ids, self._stops(self._hints_left(s)))
            if stop == self.mt.hint_marker:
                ids = self._before(ids, stop)
            s.add(ids, True, logprobs[: len(ids)] if logprobs is not None else None)
            s.trace.turns += 0 if stop == self.mt.hint_marker else 1
            if stop == self.mt.hint_marker:
                self._observe(
                    s, self._plain(self.mt.hints[s.trace.hints % len(self.mt.hints)]), budget=budget
                )
                s.trace.hints += 1
                continue
            found = self._calls(self.encoder.tokenizer.decode(ids, skip_special_tokens=False), stop, ended)
            if found:
                calls.append((i, found))
            elif ended or stop is None:
                s.done, s.truncated = True, not ended
            if len(s.tokens) >= budget and not s.done:
                s.done = s.truncated = True
        jobs = [(i, c) for i, found in calls if not states[i].done for c in found]
        results = list(self.pool.map(lambda job: self._run(states[job[0]], job[1]), jobs))
        by_response: dict[int, list[tuple[CallRecord, Image.Image | None]]] = {}
        for (i, _), result in zip(jobs, results, strict=True):
            by_response.setdefault(i, []).append(result)
        for i, outputs in by_response.items():
            s = states[i]
            s.trace.calls += [record for record, _ in outputs]
            if s.trace.turns >= self.mt.max_turns:
                s.done = s.truncated = True  # it called a tool on its last allowed turn
                continue
            self._observe(s, *self._observation(outputs), budget=budget)

    def _run(self, s: _Response, call: ToolCall) -> tuple[CallRecord, Image.Image | None]:
        """One call, with the prompt's own images as its context (a crop is of the original image)."""
        context = ToolContext(s.images[: len(s.prompt.image_tokens)], s.prompt.sample_id)
        return run_call(call, self.tools, context, self.max_chars)

    def _cut(self, ids: list[int], stops: tuple[str, ...]) -> tuple[list[int], bool, str | None]:
        """The turn's tokens up to the first end token or stop string (inclusive): (tokens, ended, stop)."""
        end = next((k for k, t in enumerate(ids) if t in self.eos), None)
        if end is not None:
            ids = ids[: end + 1]
        if stops:
            text = self.encoder.tokenizer.decode(ids, skip_special_tokens=False)
            hits = [(text.find(x), x) for x in stops if x in text]
            if hits:
                at, stop = min(hits)
                k = self._prefix_reaching(ids, at + len(stop))
                return ids[:k], False, stop
        return ids, end is not None, None

    def _prefix_reaching(self, ids: list[int], chars: int) -> int:
        """The fewest tokens whose text is at least `chars` characters long."""
        low, high = 1, len(ids)
        while low < high:
            mid = (low + high) // 2
            if len(self.encoder.tokenizer.decode(ids[:mid], skip_special_tokens=False)) >= chars:
                high = mid
            else:
                low = mid + 1
        return high

    def _before(self, ids: list[int], marker: str) -> list[int]:
        """The tokens before the one where `marker` starts (the hint replaces the marker)."""
        text = self.encoder.tokenizer.decode(ids, skip_special_tokens=False)
        k = self._prefix_reaching(ids, text.rfind(marker) + 1)
        return ids[: k - 1]

    def _calls(self, text: str, stop: str | None, ended: bool) -> list[ToolCall]:
        if self.mt.layout == "code":
            if stop != CODE_END:
                return []
            blocks = CODE.findall(text)
            return [
                ToolCall(
                    "python",
                    {"code": blocks[-1]} if blocks else {},
                    "" if blocks else "a </code> without <code>",
                )
            ]
        if not ended:
            return []
        found = [parse_json_call(c.strip()) for c in TOOL_CALL.findall(text)][:MAX_CALLS_PER_TURN]
        if not found and "<tool_call>" in text:
            found = [ToolCall("?", error="a <tool_call> without its </tool_call>")]
        return found

    # ------------------------------------------------------------ observations

    def _observe(
        self, s: _Response, ids: list[int], new_images: Sequence[Image.Image] = (), *, budget: int
    ) -> None:
        """Append an observation (or a hint) to a response, unless it would not fit the budget: then it ends."""
        if len(s.tokens) + len(ids) >= budget:
            s.done = s.truncated = True
            return
        s.add(ids, False)
        s.trace.observation_tokens += len(ids)
        if new_images:
            pixels, grid = self.encoder.process_images(list(new_images))
            t = s.trace
            t.pixel_values = pixels if t.pixel_values is None else torch.cat([t.pixel_values, pixels])
            t.image_grid_thw = grid if t.image_grid_thw is None else torch.cat([t.image_grid_thw, grid])
            t.image_tokens += [int(g.prod()) // self.encoder.merge_size**2 for g in grid]
            t.images += list(new_images)
            s.images += list(new_images)

    def _observation(
        self, outputs: list[tuple[CallRecord, Image.Image | None]]
    ) -> tuple[list[int], list[Image.Image]]:
        """The tokens of one turn's tool results (and the images among them)."""
        images = [im for _, im in outputs if im is not None]
        if self.mt.layout == "code":
            record = outputs[0][0]
            return self._plain("<output>\n", record.output.rstrip("\n"), "\n</output>\n"), []
        messages: list[dict] = [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": SENTINEL.format("a")},
        ]
        for k, (_, image) in enumerate(outputs):
            text = SENTINEL.format(k)
            content: Any = [{"type": "image"}, {"type": "text", "text": text}] if image is not None else text
            messages.append({"role": "tool", "content": content})
        rendered = self.encoder.render(messages, add_generation_prompt=True)
        rendered = rendered[rendered.index(SENTINEL.format("a")) + len(SENTINEL.format("a")) :]
        eos_text = self.encoder.tokenizer.decode([self.encoder.tokenizer.eos_token_id])
        if rendered.startswith(eos_text):  # the model's turn already ends with it
            rendered = rendered[len(eos_text) :]
        ids: list[int] = []
        counts = iter([self.encoder.tokens_per_image(*im.size) for im in images] if images else [])
        for k, (record, _) in enumerate(outputs):
            piece, rendered = rendered.split(SENTINEL.format(k), 1)
            ids += self._template(piece, counts) + self._plain(self._cut_observation(record.output))
        return ids + self._template(rendered, counts), images

    def _template(self, text: str, counts) -> list[int]:
        """Template text (its special tokens are real ones), image placeholders expanded."""
        if self.encoder.image_token in text:
            text = self.encoder.expand_image_tokens(
                text, [next(counts) for _ in range(text.count(self.encoder.image_token))]
            )
        return self.encoder.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _plain(self, *texts: str) -> list[int]:
        """Text from outside the model (a tool's output, a hint), tokenised so that a special token's name in it
        stays text: printing "<|im_end|>" cannot end a turn."""
        return self.encoder.tokenizer("".join(texts), add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]

    def _cut_observation(self, text: str) -> str:
        ids = self._plain(text)
        if len(ids) <= self.mt.max_observation_tokens:
            return text
        kept = self.encoder.tokenizer.decode(ids[: self.mt.max_observation_tokens])
        return kept + f"\n... [output cut at {self.mt.max_observation_tokens} tokens]"

    # ------------------------------------------------------------ the result

    def _rollout(self, batch: PromptBatch, n: int, states: list[_Response], max_new: int) -> Rollout:
        pad = self.encoder.pad_token_id
        ids, loss_mask = padded([s.tokens for s in states], pad), padded([s.mask for s in states])
        logprobs = padded([s.logprobs for s in states], dtype=torch.float32)
        for s in states:
            model_ids = [t for t, m in zip(s.tokens, s.mask, strict=True) if m]
            s.trace.model_text = self.encoder.decode([model_ids])[0]
        lengths = torch.tensor([len(s.tokens) for s in states], dtype=torch.long)
        truncated = torch.tensor([s.truncated for s in states])
        texts = self.encoder.decode([s.tokens for s in states])
        engine = logprobs if getattr(self.backend, "returns_logprobs", False) else None
        rollout = Rollout.of(batch, n, ids, lengths, truncated, texts, pad, engine)
        rollout.loss_mask = loss_mask * rollout.completion_mask
        rollout.traces = [s.trace for s in states]
        return rollout
