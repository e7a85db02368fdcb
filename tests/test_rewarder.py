import json

import pytest
from PIL import Image

from observe_r1.rewards import RewardBatch, Rewarder, RewardFunctionError

GOOD = "<observe>a red square</observe><think>one</think><answer>{}</answer>"


def batch(completions, answers=None, **columns):
    n = len(completions)
    red = Image.new("RGB", (28, 28), (220, 40, 40))
    return RewardBatch(
        completions=completions,
        completion_ids=[[1, 2, 3]] * n,
        completion_lengths=[3] * n,
        prompts=[[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]] * n,
        images=[[red]] * n,
        answers=answers or ["1"] * n,
        group_ids=[i // 2 for i in range(n)],
        columns=columns,
    )


def test_default_terms_reproduce_the_paper():
    r = Rewarder([("accuracy", 1.0), ("observe_format", 0.5)])
    out = r(batch([GOOD.format(1), GOOD.format(2), "<answer>1</answer>", "nothing"]))
    assert out.total.tolist() == [1.5, 0.5, 1.0, 0.0]
    assert out.correct.tolist() == [True, False, True, False]
    assert out.metrics["reward/accuracy/mean"] == 0.5 and out.metrics["reward/observe_format/rate_1"] == 0.5
    assert out.metrics["reward/total/mean"] == 0.75 and out.metrics["reward/errors"] == 0.0
    assert out.metrics["reward/unparsed_gold"] == 0.0


def test_unparsed_gold_is_counted():
    out = Rewarder([("accuracy", 1.0)])(batch([GOOD.format("x")] * 2, answers=["???", "1"]))
    assert out.metrics["reward/unparsed_gold"] == 0.5


PLUGIN = """
import time
SEEN = {"calls": []}

def spy(completions, images, group_ids, prompts, answers, completion_ids, completion_lengths, **columns):
    SEEN.update(images=images, columns=columns, prompts=prompts)
    SEEN["calls"].append(group_ids)
    return [1.0 if images[i][0].getpixel((0, 0)) == (220, 40, 40) else 0.0 for i in range(len(completions))]

def maybe(completions, **kw):
    return [None if "skip" in c else 2.0 for c in completions]

def parts(completions, **kw):
    return [{"style": 0.5, "length": None if i else 0.25} for i in range(len(completions))]

def flaky(completions, **kw):
    if any("boom" in c for c in completions):
        if len(completions) > 1:
            raise RuntimeError("batch failed")
        raise ValueError("cannot score " + completions[0])
    return [1.0] * len(completions)

def short(completions, **kw):
    return [1.0]

def strings(completions, **kw):
    return ["good"] * len(completions)

def nan(completions, **kw):
    return [float("nan")] * len(completions)

def call_size(completions, **kw):
    return [float(len(completions))] * len(completions)

def hang(completions, **kw):
    if any("hang" in c for c in completions):
        time.sleep(1000)
    return [1.0] * len(completions)

def trl_style(completions, solution, **kwargs):  # TRL's signature: this dataset has no `solution` column
    return [float(c == s) for c, s in zip(completions, solution)]

def dense(completions, **kw):
    return [0.6, 0.4] * (len(completions) // 2)

def huge(completions, **kw):
    return [1e39] * len(completions)

def slow(completions, **kw):
    time.sleep(0.4)
    return [1.0] * len(completions)
"""


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(PLUGIN)
    return path


def test_plugin_from_file_sees_image_group_and_columns(plugin):
    r = Rewarder([("accuracy", 1.0), (f"{plugin}:spy", 0.5)], workers=0)  # in this process: SEEN is visible
    out = r(batch([GOOD.format(1)] * 4, level=[1, 2, 3, 4], skill=["a"] * 4))
    import sys

    module = next(m for name, m in sys.modules.items() if name.startswith("observe_r1_reward_my_rewards"))
    seen = module.SEEN
    assert seen["calls"] == [[0, 0], [1, 1]]  # one call per group
    assert seen["images"][0][0].size == (28, 28)
    assert seen["columns"] == {"level": [3, 4], "skill": ["a"] * 2}
    assert seen["prompts"][0][0]["role"] == "user"
    assert out.total.tolist() == [1.5] * 4 and out.metrics["reward/spy/mean"] == 1.0


def test_plugin_from_module_path():
    r = Rewarder([("accuracy", 1.0), ("examples.reward_plugin:observe_mentions_colours", 1.0)])
    out = r(batch([GOOD.format(1), "<observe>blue things</observe>"]))
    assert out.terms["observe_mentions_colours"].tolist() == [1.0, -0.125]


def test_none_is_not_applicable(plugin):
    out = Rewarder([("accuracy", 1.0), (f"{plugin}:maybe", 1.0)])(batch([GOOD.format(1), "skip"]))
    assert out.total.tolist() == [3.0, 0.0]
    assert out.metrics["reward/maybe/mean"] == 2.0  # the None is left out of the mean


def test_dict_sub_scores_are_summed_and_logged(plugin):
    out = Rewarder([("accuracy", 1.0), (f"{plugin}:parts", 1.0)])(batch([GOOD.format(1), GOOD.format(1)]))
    assert out.terms["parts"].tolist() == [0.75, 0.5]
    assert out.metrics["reward/parts/style/mean"] == 0.5 and out.metrics["reward/parts/length/mean"] == 0.25


def test_a_raising_reward_scores_that_sample_zero_and_is_counted(plugin, caplog):
    r = Rewarder([("accuracy", 1.0), (f"{plugin}:flaky", 1.0)])
    completions = [GOOD.format(1), "boom 1", GOOD.format(1), "boom 2"]
    with caplog.at_level("WARNING"):
        out = r(batch(completions))
        r(batch(completions))  # the same error again is not logged again
    assert out.terms["flaky"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out.metrics["reward/errors"] == 2.0
    assert caplog.text.count("Traceback") == 2  # one per distinct error message
    assert "cannot score boom 1" in caplog.text and "cannot score boom 2" in caplog.text


@pytest.mark.parametrize(
    "fn, message", [("short", "must return a list of 2 values"), ("strings", "returned 'good'")]
)
def test_wrong_length_or_type_fails_fast_naming_the_function(plugin, fn, message):
    r = Rewarder([("accuracy", 1.0), (f"{plugin}:{fn}", 1.0)])
    with pytest.raises(RewardFunctionError, match=f"reward function {fn} {message}"):
        r(batch([GOOD.format(1)] * 2))


def test_bad_references_are_clear(tmp_path, plugin):
    with pytest.raises(FileNotFoundError, match="nope.py not found"):
        Rewarder([("accuracy", 1.0), (f"{tmp_path}/nope.py:fn", 1.0)])
    with pytest.raises(ValueError, match="has no callable 'missing'"):
        Rewarder([("accuracy", 1.0), (f"{plugin}:missing", 1.0)])
    with pytest.raises(ValueError, match="not a built-in"):
        Rewarder([("accuracy", 1.0), ("acuracy", 1.0)])
    with pytest.raises(ValueError, match="correct_term 'accuracy' is not one of"):
        Rewarder([("observe_format", 1.0)])


def test_from_config(tmp_path):
    from observe_r1.config import load_config

    cfg = load_config(None, ["reward.terms=[{name: accuracy}, {name: think_format, weight: 0.5}]"])
    r = Rewarder.from_config(cfg.reward)
    out = r(batch(["<think>x</think><answer>1</answer>", GOOD.format(1)]))
    assert out.total.tolist() == [1.5, 1.0]
    json.dumps(out.metrics)  # plain floats, loggable


def test_terms_run_once_per_group_in_worker_processes(plugin):
    with Rewarder([("accuracy", 1.0), (f"{plugin}:call_size", 1.0)], workers=2) as r:
        out = r(batch([GOOD.format(1)] * 6))
    assert out.terms["call_size"].tolist() == [2.0] * 6  # groups of 2 (group_ids 0 0 1 1 2 2)
    assert out.terms["accuracy"].tolist() == [1.0] * 6


def test_a_hanging_reward_is_bounded_from_any_thread(plugin):
    """A response that hangs scores 0 and is counted; the others are scored. The bound holds in a thread
    other than the main one (math-verify's SIGALRM limit does not)."""
    import threading
    import time

    r = Rewarder([("accuracy", 1.0), (f"{plugin}:hang", 1.0)], timeout_s=0.5, workers=2)
    result = {}
    started = time.perf_counter()
    thread = threading.Thread(
        target=lambda: result.update(out=r(batch([GOOD.format(1), "hang", GOOD.format(1), GOOD.format(1)])))
    )
    thread.start()
    thread.join(timeout=30)
    r.close()
    assert not thread.is_alive() and time.perf_counter() - started < 30
    out = result["out"]
    assert out.terms["hang"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert out.metrics["reward/timeouts"] == 1.0


def test_a_term_that_hangs_on_every_response_stops_the_run(plugin):
    from observe_r1.rewards import RewardTimeoutError

    with (
        Rewarder([("accuracy", 1.0), (f"{plugin}:hang", 1.0)], timeout_s=0.3, workers=2) as r,
        pytest.raises(RewardTimeoutError, match="reward term hang took longer .* on every one of the 2"),
    ):
        r(batch(["hang 1", "hang 2"]))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_term_that_fails_on_every_response_stops_with_its_traceback(plugin, workers):
    with (
        Rewarder([("accuracy", 1.0), (f"{plugin}:trl_style", 1.0)], workers=workers) as r,
        pytest.raises(RewardFunctionError, match=r"reward term trl_style raised on every one of the 4 ") as e,
    ):
        r(batch([GOOD.format(1)] * 4))
    assert "missing 1 required positional argument: 'solution'" in str(e.value)


def test_nan_is_an_error_naming_the_function(plugin):
    with (
        Rewarder([("accuracy", 1.0), (f"{plugin}:nan", 1.0)]) as r,
        pytest.raises(RewardFunctionError, match="reward function nan returned nan; return None"),
    ):
        r(batch([GOOD.format(1)] * 2))


def test_correct_is_a_threshold_on_the_correct_term(plugin):
    r = Rewarder([(f"{plugin}:dense", 1.0)], correct_term="dense", correct_threshold=0.5, workers=0)
    assert r(batch([GOOD.format(1)] * 4)).correct.tolist() == [True, False, True, False]


def test_a_gate_term_zeroes_the_others_unless_it_is_one():
    """Plantain / Vision-R1: accuracy counts only when the format is right; the gate's own weight is unused."""
    r = Rewarder([("accuracy", 1.0), ("observe_format", 0.5)], gate="observe_format", workers=0)
    out = r(batch([GOOD.format(1), "<answer>1</answer>", GOOD.format(2), "nothing"]))
    assert out.total.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert out.correct.tolist() == [True, True, False, False]  # correctness is still the accuracy term's
    with pytest.raises(ValueError, match="reward.gate 'format' is not one of"):
        Rewarder([("accuracy", 1.0)], gate="format")


def test_config_layouts_become_format_terms():
    from observe_r1.config import load_config

    cfg = load_config(None, ["reward.layouts={plan: 'plan think answer'}", "reward.terms=[{name: accuracy}, "
                             "{name: plan_format, weight: 0.5}, {name: parallel_format, weight: 0.1}]"])  # fmt: skip
    r = Rewarder.from_config(cfg.reward)
    out = r(batch(["<plan>p</plan><think>t</think><answer>1</answer>", GOOD.format(1)]))
    assert out.terms["plan_format"].tolist() == [1.0, 0.0] and out.terms["parallel_format"].tolist() == [
        0.0,
        0.0,
    ]
    assert r.format_term == "plan_format"
    bad = load_config(
        None,
        ["reward.layouts={plan: 'plan ( answer'}", "reward.terms=[{name: accuracy}, {name: plan_format}]"],
    )
    with pytest.raises(ValueError, match="format layout 'plan'"):
        Rewarder.from_config(bad.reward)


# ------------------------------------------------------------------ issue 24: bounds that hold, overflow


TOWER = "<observe>a</observe><think>b</think><answer>$10^{10^{10}}$</answer>"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_power_tower_is_graded_within_the_bound(workers):
    """`$10^{10^{10}}$` graded for over 120 s at timeout_s=5 (sympy's big integers never return to Python)
    in this process; through the pool each such response cost (n + 1) x timeout_s."""
    import time

    with Rewarder([("accuracy", 1.0), ("observe_format", 0.5)], timeout_s=2, workers=workers) as r:
        started = time.perf_counter()
        out = r(batch([TOWER, GOOD.format(1), TOWER, GOOD.format(1)]))
        took = time.perf_counter() - started
    assert took < 2 * 2 + 5, took
    assert out.terms["accuracy"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_a_closure_or_lambda_is_scored_under_the_same_bound():
    """Callables a worker cannot import (defined in __main__, a notebook, a closure) ran in the trainer's
    process, where a hang hung training: now they run in forked workers, bounded like the others."""
    import threading

    def hangs(completions, **kw):
        if any("hang" in c for c in completions):
            threading.Event().wait(1000)
        return [1.0] * len(completions)

    with Rewarder(
        [("accuracy", 1.0), ("hangs", 1.0)], timeout_s=0.5, workers=2, functions={"hangs": hangs}
    ) as r:
        assert r.forked
        out = r(batch([GOOD.format(1), "hang", GOOD.format(1), GOOD.format(1)]))
    assert out.terms["hangs"].tolist() == [1.0, 0.0, 1.0, 1.0] and out.metrics["reward/timeouts"] == 1.0
    with Rewarder(
        [("accuracy", 1.0), ("lam", 1.0)],
        workers=2,
        functions={"lam": lambda completions, **kw: [2.0] * len(completions)},
    ) as r:
        assert r(batch([GOOD.format(1)] * 2)).terms["lam"].tolist() == [2.0, 2.0]


def test_rewards_and_weights_that_overflow_are_refused(plugin):
    with (
        Rewarder([("accuracy", 1.0), (f"{plugin}:huge", 1.0)]) as r,
        pytest.raises(RewardFunctionError, match="within"),
    ):
        r(batch([GOOD.format(1)] * 2))  # 1e39 overflowed float32: reward inf, every optimiser step skipped
    for weight in (1e308, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="weight"):
            Rewarder([("accuracy", weight)])


def test_killed_reward_workers_do_not_end_the_run(plugin):
    """kill -9 of three workers 3 s apart (an OOM killer): the pool is rebuilt and the responses scored again.
    Killing a worker while the pool was idle (as it is while the policy generates) broke pebble's pool
    ("Unexpected error within the Pool") and ended the run; one killed while scoring costs a retry."""
    import os
    import signal
    import threading
    import time

    def workers(r):
        return [w.pid for w in r._pool._pool_manager.worker_manager.workers.values()]

    r = Rewarder([("accuracy", 1.0), (f"{plugin}:slow", 1.0)], timeout_s=5, workers=2)
    outs = [r(batch([GOOD.format(1)] * 4))]
    for _ in range(3):  # idle: between two steps
        os.kill(workers(r)[0], signal.SIGKILL)
        time.sleep(3)
        outs.append(r(batch([GOOD.format(1)] * 4)))
    busy = workers(r)[0]  # and once while it scores
    threading.Timer(0.2, os.kill, (busy, signal.SIGKILL)).start()
    outs.append(r(batch([GOOD.format(1)] * 4)))
    r.close()
    assert all(out.terms["slow"].tolist() == [1.0] * 4 for out in outs)  # every response scored, none lost
    assert sum(out.metrics["reward/pool_rebuilds"] for out in outs) >= 1
