"""The `judge` reward term: LLM-as-judge (a generative reward model) over each response of a step.

For each response, `reward.judge.template` (Jinja, sandboxed; the policy's text is a value, never template
code) renders the judge's question from `prompt` (the question's text), `response`, `answer` (the gold),
`messages` and the dataset columns. Identical questions within a step are asked once. The judge is:
  a local model  (`reward.judge.model`): greedy HF generate in the trainer process, `batch_size` at a time;
  an endpoint    (`reward.judge.url`): OpenAI's chat-completions route (`observe-r1 serve`, `vllm serve`, a
                 provider), `batch_size` requests in flight, the API key read from `api_key_env` (sent as a
                 bearer token, never logged), each request bounded by `timeout_s` and retried up to
                 `max_retries` times on HTTP 429 (after its Retry-After), 5xx and dropped connections, with
                 exponential backoff.
The score is the first group of `score_regex` at its last match in the answer (or the `score_field` of the
JSON object in it), divided by `max_score`. A judgement that fails (unparsed, out of range, timed out, an HTTP
error) scores `failure_score` and is counted (`reward/judge_unparsed`, `reward/judge_failed`,
`reward/judge_retries`); a step on which every judgement failed stops the run with the first failure: a
judge that is down or a regex that never matches would otherwise train on `failure_score` alone.
The judge reads text only (a VLM judge does not get the prompt's images).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from observe_r1.config import Config, JudgeConfig
from observe_r1.data.dataset import Sample, question_text
from observe_r1.data.transforms import sketch_thought
from observe_r1.rewards.terms import RewardFunctionError
from observe_r1.rollout.base import PromptBatch, SamplingParams
from observe_r1.rollout.hf import HFRollout
from observe_r1.training import runtime, setup

log = logging.getLogger(__name__)

RETRIED = {429, 500, 502, 503, 504}


@dataclass
class Failure:
    """A judgement that did not come back: why, and how many retries it took."""

    why: str
    retries: int = 0


def render_all(cfg: JudgeConfig, rows: list[dict[str, Any]]) -> list[str]:
    """The judge's question about each response; a template error names the template's problem."""
    try:
        template = ImmutableSandboxedEnvironment(undefined=StrictUndefined).from_string(cfg.template)
        return [template.render(**row) for row in rows]
    except TemplateError as e:
        raise ValueError(
            f"reward.judge.template: {type(e).__name__}: {e} (variables: {sorted(rows[0])})"
        ) from e


def parse_score(cfg: JudgeConfig, text: str) -> float | None:
    """The judge's score in [0, 1], or None when its answer holds none (or one outside [0, max_score])."""
    if cfg.score_field:
        found = re.search(r"\{.*\}", text, re.S)
        try:
            value = json.loads(found.group(0))[cfg.score_field] if found else None
            value = float(value) if value is not None and not isinstance(value, bool) else None
        except (ValueError, TypeError, KeyError):
            value = None
    else:
        matches = re.findall(cfg.score_regex, text)
        last = matches[-1] if matches else None
        value = float(last[0] if isinstance(last, tuple) else last) if last is not None else None
    if value is None or not 0 <= value <= cfg.max_score:
        return None
    return value / cfg.max_score


class Judge:
    """The `judge` term (see the module docstring). Called with the whole batch (`whole_batch`)."""

    whole_batch = True
    __name__ = "judge"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._local: HFRollout | None = None

    def __getstate__(self) -> dict[str, Any]:  # sent to another process without its model: it loads its own
        return {**self.__dict__, "_local": None}

    def score(
        self, completions: list[str], prompts: list[list[dict]], answers: list[str], **columns: Any
    ) -> tuple[list[float], dict[str, int]]:
        jc = self.cfg.reward.judge
        rows = []
        for i, (response, messages, answer) in enumerate(zip(completions, prompts, answers, strict=True)):
            row = {k: v[i] for k, v in columns.items() if k.isidentifier()}
            rows.append(
                row
                | {
                    "prompt": question_text(messages),
                    "response": response,
                    "answer": answer,
                    "messages": messages,
                }
            )
        questions = render_all(jc, rows)
        distinct = list(dict.fromkeys(questions))  # identical questions within a step: asked once
        replies = dict(zip(distinct, self.ask(distinct), strict=True))
        values: list[float] = []
        counts = {"judge_requests": len(distinct), "judge_unparsed": 0, "judge_failed": 0, "judge_retries": 0}
        first_failure = ""
        for q in questions:
            reply = replies[q]
            score = None if isinstance(reply, Failure) else parse_score(jc, reply)
            if score is None:
                kind = "judge_failed" if isinstance(reply, Failure) else "judge_unparsed"
                counts[kind] += 1
                why = reply.why if isinstance(reply, Failure) else f"no score in {reply[:200]!r}"
                first_failure = first_failure or why
            values.append(jc.failure_score if score is None else score)
        counts["judge_retries"] = sum(r.retries for r in replies.values() if isinstance(r, Failure))
        if questions and counts["judge_unparsed"] + counts["judge_failed"] == len(questions):
            raise RewardFunctionError(
                f"the judge failed on every one of the {len(questions)} responses of this step "
                f"({counts['judge_failed']} requests failed, {counts['judge_unparsed']} answers held no score); "
                f"the first: {first_failure}"
            )
        return values, counts

    def __call__(self, **kwargs: Any) -> list[float]:
        return self.score(**kwargs)[0]

    def ask(self, questions: list[str]) -> list[str | Failure]:
        jc = self.cfg.reward.judge
        if jc.url:
            return ask_endpoint(jc, questions)
        backend = self.local()
        out: list[str | Failure] = []
        sampling = SamplingParams(n=1, max_new_tokens=jc.max_new_tokens, greedy=True)
        device = next(backend.model.parameters()).device
        with torch.no_grad(), runtime.autocast(device, self.cfg.model.dtype, generation=True):
            for start in range(0, len(questions), jc.batch_size):
                chunk = questions[start : start + jc.batch_size]
                prompts = [backend.encoder.encode([{"role": "user", "content": q}]) for q in chunk]
                out += backend.generate(PromptBatch(prompts, list(range(len(chunk)))), sampling).texts
        return out

    def local(self) -> HFRollout:
        if self._local is None:
            self._local = HFRollout(*setup.load_frozen(self.cfg, self.cfg.reward.judge.model))
        return self._local


def ask_endpoint(jc: JudgeConfig, questions: list[str]) -> list[str | Failure]:
    """Each question to the endpoint, `batch_size` in flight; a reply's text or its Failure."""
    key = os.environ.get(jc.api_key_env, "") if jc.api_key_env else ""
    if jc.api_key_env and not key:
        raise ValueError(f"reward.judge.api_key_env: the environment variable {jc.api_key_env} is not set")
    deadline = jc.timeout_s * (jc.max_retries + 1) + backoff_s(jc.max_retries) * jc.max_retries + 5
    with ThreadPoolExecutor(jc.batch_size) as pool:
        futures = [pool.submit(request_with_retries, jc, q, key) for q in questions]
        out: list[str | Failure] = []
        for f in futures:
            try:
                out.append(f.result(timeout=deadline))
            except FutureTimeout:
                out.append(Failure(f"no reply in {deadline:.0f} s"))
    return out


def backoff_s(attempt: int) -> float:
    return min(0.5 * 2**attempt, 30.0)


def request_with_retries(jc: JudgeConfig, question: str, key: str) -> str | Failure:
    """One chat-completion request, retried on 429 (after Retry-After), 5xx and dropped connections."""
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": jc.max_new_tokens,
        "temperature": 0,
    }
    if jc.served_model:
        body["model"] = jc.served_model
    why = ""
    for attempt in range(jc.max_retries + 1):
        try:
            return post_json(jc.url.rstrip("/") + "/chat/completions", body, key, jc.timeout_s)
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code} {e.reason}"
            if e.code not in RETRIED:
                return Failure(why, attempt)
            wait = retry_after(e) if e.code == 429 else None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            why, wait = f"{type(e).__name__}: {getattr(e, 'reason', e)}", None
        except (ValueError, KeyError, IndexError, TypeError) as e:  # a 200 that is not a chat completion
            return Failure(f"not a chat completion ({type(e).__name__}: {e})", attempt)
        if attempt < jc.max_retries:
            time.sleep(backoff_s(attempt) if wait is None else min(wait, 60.0))
    return Failure(why, jc.max_retries)


def retry_after(e: urllib.error.HTTPError) -> float | None:
    try:
        return max(0.0, float(e.headers.get("Retry-After", "")))
    except ValueError:
        return None


def post_json(url: str, body: dict, key: str, timeout_s: float) -> str:
    """POST a chat-completion request; the first choice's text."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:  # noqa: S310 - the configured endpoint
        return str(json.loads(reply.read())["choices"][0]["message"]["content"])


ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)


def sketches_by_judge(
    cfg: Config, acc: Accelerator, samples: list[Sample], column: str, cache: Path
) -> list[Sample]:
    """SketchThinker's rewriting by a model (`sft.sketch: judge`): each reference response (`column`) rewritten
    by the judge (`reward.judge`) with `sft.sketch_template`. A rewrite that failed, or that lost the response's
    `<answer>`, is replaced by the rules' sketch and counted. The main process asks and writes `cache` (a
    resumed run reads it back: the same data); the others wait for it."""
    if acc.is_main_process and not cache.is_file():
        rows = [{k: v for k, v in s.metadata.items() if k.isidentifier()} for s in samples]
        rows = [row | {"response": s.metadata[column]} for row, s in zip(rows, samples, strict=True)]
        questions = render_all(dataclasses.replace(cfg.reward.judge, template=cfg.sft.sketch_template), rows)
        distinct = list(dict.fromkeys(questions))
        replies = dict(zip(distinct, Judge(cfg).ask(distinct), strict=True))
        out, fallbacks = {}, 0
        for s, q in zip(samples, questions, strict=True):
            reply, original = replies[q], s.metadata[column]
            wanted = ANSWER_RE.findall(original)
            if isinstance(reply, Failure) or not reply.strip() or ANSWER_RE.findall(reply) != wanted:
                reply, fallbacks = sketch_thought(original), fallbacks + 1
            out[s.id] = reply
        counts = (len(samples) - fallbacks, len(samples), fallbacks)
        log.info(
            "sketches by the judge: %d of %d rewritten, %d by the rules (the rewrite failed or lost the answer)",
            *counts,
        )
        tmp = cache.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"id": k, "response": v}) + "\n" for k, v in out.items()))
        os.replace(tmp, cache)
    acc.wait_for_everyone()
    done = {r["id"]: r["response"] for r in map(json.loads, cache.read_text().splitlines())}
    return [
        dataclasses.replace(s, metadata={**s.metadata, column: done.get(s.id, s.metadata[column])})
        for s in samples
    ]
