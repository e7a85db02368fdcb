"""The `judge` reward term: its template and score parsing, an OpenAI-compatible endpoint that hangs, answers
garbage, fails with HTTP 500 or rate-limits with 429 (a server process the test starts), and `observe-r1 serve`
answering for a real checkpoint as the same model judging in the trainer process."""

import dataclasses
import logging
import subprocess
import sys
import textwrap

import pytest

from observe_r1.config import Config, ConfigError, JudgeConfig, RewardTerm
from observe_r1.rewards import RewardBatch, Rewarder
from observe_r1.rewards.terms import RewardFunctionError
from observe_r1.training.judges import Judge, parse_score, render_all
from observe_r1.training.reward_models import model_terms

COLD = "src/observe_r1/assets/cold_start_small"

FAKE = textwrap.dedent("""
    import json, re, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    seen = {}
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            q = body["messages"][0]["content"]
            seen[q] = seen.get(q, 0) + 1
            if self.headers.get("Authorization") != "Bearer sekret":
                return self.send(401, {"error": "bad key"})
            if q.startswith("Rewrite"):
                response = q.split("\\n", 1)[1]
                short = "<think>\\nshort\\n</think>"
                answer = "no answer left" if "lose" in response else re.sub(r"<think>.*</think>", short, response, flags=re.S)
                return self.send(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})
            if "hang" in q:
                time.sleep(30)
            if "boom" in q:
                return self.send(500, {"error": "boom"})
            if "busy" in q and seen[q] == 1:
                return self.send(429, {"error": "slow down"}, {"Retry-After": "0"})
            if "notjson" in q:
                return self.send(200, None)
            answer = "I think it is fine" if "garbage" in q else ("Score: 9" if "busy" in q else "Score: 7")
            self.send(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})
        def send(self, code, payload, headers={}):
            data = b"<html>" if payload is None else json.dumps(payload).encode()
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(f"http://127.0.0.1:{server.server_port}/v1", flush=True)
    server.serve_forever()
""")


def judge_config(**kw):
    cfg = Config()
    reward = dataclasses.replace(
        cfg.reward,
        terms=[RewardTerm("accuracy", 1.0), RewardTerm("judge", 1.0)],
        judge=dataclasses.replace(cfg.reward.judge, **kw),
    )
    return dataclasses.replace(cfg, reward=reward).validate()


@pytest.fixture
def endpoint(tmp_path):
    script = tmp_path / "fake_judge.py"
    script.write_text(FAKE)
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        yield server.stdout.readline().strip()
    finally:
        server.kill()
        server.wait()


def test_scores_are_parsed_from_the_judges_answer():
    jc = JudgeConfig()
    assert parse_score(jc, "The response is right. Score: 8") == 0.8
    assert parse_score(jc, "score 3 at first... final score: 10") == 1.0  # the last match
    assert parse_score(jc, "Score: 11") is None and parse_score(jc, "no idea") is None
    field = dataclasses.replace(jc, score_field="score", max_score=1.0)
    assert parse_score(field, 'Here: {"score": 0.25, "why": "partly"}') == 0.25
    assert parse_score(field, '{"score": true}') is None and parse_score(field, "{not json}") is None


def test_the_template_sees_the_columns_and_never_runs_the_policys_text():
    jc = JudgeConfig(template="{{ prompt }}|{{ response }}|{{ answer }}|{{ level }}")
    rows = [
        {
            "prompt": "How many?",
            "response": "{{ 7 * 7 }} {% for x in range(3) %}x{% endfor %}",
            "answer": "3",
            "level": 2,
            "messages": [],
        }
    ]
    assert render_all(jc, rows) == ["How many?|{{ 7 * 7 }} {% for x in range(3) %}x{% endfor %}|3|2"]
    with pytest.raises(ValueError, match="'skill' is undefined"):
        render_all(JudgeConfig(template="{{ skill }}"), rows)


def ask(judge, responses):
    n = len(responses)
    return judge.score(
        completions=responses, prompts=[[{"role": "user", "content": "q"}]] * n, answers=["1"] * n
    )


def test_an_endpoint_that_hangs_fails_or_rate_limits_is_survived_and_counted(endpoint, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    cfg = judge_config(
        url=endpoint, api_key_env="JUDGE_KEY", timeout_s=1.0, max_retries=2, template="{{ response }}"
    )
    judge = Judge(cfg)
    caplog.set_level(logging.DEBUG)
    values, counts = ask(judge, ["ok", "ok", "busy", "garbage", "boom", "hang", "notjson"])
    assert values == [0.7, 0.7, 0.9, 0.0, 0.0, 0.0, 0.0]
    assert counts["judge_requests"] == 6  # the two identical questions asked once
    assert counts["judge_unparsed"] == 1 and counts["judge_failed"] == 3
    assert counts["judge_retries"] >= 4  # boom and hang, twice each (busy's one retry succeeded)
    assert "sekret" not in caplog.text
    with pytest.raises(RewardFunctionError, match="failed on every one of the 2 responses.*HTTP 500"):
        ask(judge, ["boom", "boom again"])
    monkeypatch.setenv("JUDGE_KEY", "wrong")
    with pytest.raises(RewardFunctionError, match="HTTP 401"):  # not retried
        ask(judge, ["ok"])


def test_the_judge_term_in_the_rewarder_logs_its_counts(endpoint, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    cfg = judge_config(
        url=endpoint, api_key_env="JUDGE_KEY", template="{{ response }}", max_retries=0, timeout_s=1.0
    )
    batch = RewardBatch(
        ["<answer>1</answer> ok", "garbage"],
        [[], []],
        [1, 1],
        [[{"role": "user", "content": "q"}]] * 2,
        [[], []],
        ["1", "1"],
        [0, 0],
    )
    with Rewarder.from_config(cfg.reward, model_terms(cfg)) as rewarder:
        result = rewarder(batch)
    assert result.terms["judge"].tolist() == pytest.approx(
        [0.7, 0.0]
    ) and result.total.tolist() == pytest.approx([1.7, 0.0])
    assert result.metrics["reward/judge_unparsed"] == 1 and result.metrics["reward/judge_requests"] == 2


def test_judge_config_is_checked():
    with pytest.raises(ConfigError, match="reward.judge"):
        judge_config()
    with pytest.raises(ConfigError, match="reward.judge"):
        judge_config(model=COLD, url="http://x/v1")
    with pytest.raises(ConfigError, match="http:// or https://"):
        judge_config(url="file:///etc/passwd")


def test_observe_r1_serve_judges_as_the_same_model_in_process():
    server = subprocess.Popen(
        [sys.executable, "-m", "observe_r1.cli", "serve", COLD, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = server.stdout.readline().split(" on ")[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        template = "How many squares are there in {{ prompt }}?"
        kw = dict(template=template, score_regex=r"<answer>(\d+)</answer>", max_score=20, max_new_tokens=48)
        questions = ["a red square at (1,1) and a blue square at (2,2)", "a green circle", "two squares"]
        served, counts = ask_questions(Judge(judge_config(url=url, **kw)), questions)
        local, _ = ask_questions(Judge(judge_config(model=COLD, **kw)), questions)
        assert served == local and counts["judge_failed"] == 0 and counts["judge_requests"] == 3
    finally:
        server.terminate()
        server.wait()


def ask_questions(judge, questions):
    prompts = [[{"role": "user", "content": q}] for q in questions]
    return judge.score(completions=["-"] * len(questions), prompts=prompts, answers=["1"] * len(questions))


def test_sketches_rewritten_by_the_judge_keep_the_answer_and_are_cached(endpoint, monkeypatch, tmp_path):
    from observe_r1.data.dataset import Sample
    from observe_r1.training.judges import sketches_by_judge
    from observe_r1.training.runtime import make_accelerator

    monkeypatch.setenv("JUDGE_KEY", "sekret")
    cfg = judge_config(url=endpoint, api_key_env="JUDGE_KEY", max_retries=0, timeout_s=1.0)
    long = "<think>\nOkay, let me see. Wait, let me double-check that. The answer is 2.\n</think>\n<answer>2</answer>"
    samples = [
        Sample(f"s{i}", [{"role": "user", "content": "q"}], [], "2", {"long": text})
        for i, text in enumerate([long, long.replace("The answer", "lose the answer")])
    ]
    cache = tmp_path / "sketches.jsonl"
    done = sketches_by_judge(cfg, make_accelerator(), samples, "long", cache)
    assert done[0].metadata["long"] == "<think>\nshort\n</think>\n<answer>2</answer>"  # the judge's rewrite
    assert done[1].metadata["long"] == "<think>\nlose the answer is 2.\n</think>\n<answer>2</answer>"  # rules
    cache.write_text(cache.read_text().replace("short", "from the cache"))
    again = sketches_by_judge(cfg, make_accelerator(), samples, "long", cache)  # a resumed run: the same data
    assert "from the cache" in again[0].metadata["long"]
