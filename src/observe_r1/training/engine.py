"""Where a GRPO step's scored groups come from (docs/rollout.md "Asynchronous rollouts").

`SyncSource` generates and scores a step's prompts when the trainer asks (the policy itself, or a colocated
vLLM engine). `AsyncSource` (`rollout.mode: async`) starts an engine process that generates and scores ahead
while the trainer trains: requests for the next `max_staleness` steps are queued as soon as the policy
version they need exists, every request is generated with weights at least `step - max_staleness` versions
old, and the trainer's weights reach the engine after every update through a gloo broadcast in a process
group of their own (never through files), while the engine keeps generating. Both sources return the same
`ScoredRollout`; the GRPO step does not know which one it has.
Imports data, models, rewards, rollout and training.{scoring,setup,runtime,sharding}."""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import pickle
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from observe_r1.config import Config
from observe_r1.data.dataset import Sample
from observe_r1.data.prompts import system_prompt
from observe_r1.models.policy import completion_logprobs
from observe_r1.rewards import Rewarder
from observe_r1.rollout.base import Rollout, RolloutBackend, SamplingParams
from observe_r1.rollout.batch import chunks, sequence_inputs
from observe_r1.rollout.hf import HFRollout
from observe_r1.rollout.partial import PartialRollout
from observe_r1.training import runtime, setup, sharding
from observe_r1.training.scoring import Generated, ScoredRollout, generate, generate_and_score, score

log = logging.getLogger(__name__)

POLL_S = 0.02  # how often a waiting side looks at the other one
CLOSE_GRACE_S = 5.0  # an engine still generating when the run ends is killed after this
ASYNC_TIS_CAP = 2.0  # decoupled correction without algorithm.tis_cap: the cap verl and TRL use


@dataclass
class Request:
    """A step's prompts for one process: dataset rows, group ids (they seed the sampling), and the oldest
    policy version allowed to generate them; `drawn` is the whole step's draw (every process's)."""

    step: int
    attempt: int
    indices: list[int]
    ids: list[int]
    drawn: list[int] = field(default_factory=list)
    min_version: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return self.step, self.attempt


@dataclass
class Scored:
    """What a source returns: the scored groups of a request, the policy version that generated them (None:
    the trainer's current policy) and, from the engine, how it spent its time."""

    request: Request
    got: ScoredRollout | Generated  # Generated: the trainer scores it (reward callables that cannot travel)
    version: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def sampling_of(cfg: Config) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(r.n, r.temperature, r.top_p, r.top_k, r.max_new_tokens, chunk_size=r.chunk_size)


class SyncSource:
    """Generate and score on demand, with the trainer's policy (or its colocated engine)."""

    def __init__(
        self,
        cfg: Config,
        acc: Any,
        policy: torch.nn.Module,
        backend: RolloutBackend,
        rewarder: Rewarder,
        samples: list[Sample],
        encoder: Any,
        timer: Any,
    ) -> None:
        self.cfg, self.acc, self.policy, self.backend = cfg, acc, policy, backend
        self.rewarder, self.samples, self.encoder, self.timer = rewarder, samples, encoder, timer
        self.request: Callable[[int, int], Request] | None = None
        self.steps = 0

    def publish(self, version: int) -> None:
        """HF: the policy itself generates; vLLM: the engine gets a copy of the weights."""
        self.backend.update_weights(self.acc.unwrap_model(self.policy))

    def generating(self) -> contextlib.AbstractContextManager:
        gathered = (
            sharding.gathered(self.policy) if self.cfg.rollout.backend == "hf" else contextlib.nullcontext()
        )
        stack = contextlib.ExitStack()
        stack.enter_context(runtime.autocast(self.acc.device, self.cfg.model.dtype, generation=True))
        stack.enter_context(gathered)
        return stack

    def take(self, step: int, attempt: int) -> Scored:
        assert self.request is not None
        req = self.request(step, attempt)
        got = generate_and_score(
            self.backend,
            self.encoder,
            self.rewarder,
            [self.samples[i] for i in req.indices],
            req.ids,
            sampling_of(self.cfg),
            system_prompt(self.cfg.data.system_prompt),
            self.cfg.seed,
            self.timer,
        )
        return Scored(req, got)

    def pending(self) -> list[dict]:
        return []

    def resume(self, pending: list[Request]) -> None:
        if pending:
            raise ValueError(
                "this checkpoint was saved by an async run with queued groups: resume it with "
                "rollout.mode=async (or from a checkpoint without them)"
            )

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ weights over a process group


def portable(obj: Any) -> bool:
    """Whether `obj` can be sent to a spawned process (pickled by reference: module-level functions)."""
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - pickling raises PicklingError, AttributeError, TypeError...
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weight_spec(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in state.items() if v.dtype.is_floating_point]


def flat_buckets(spec: list[tuple[str, tuple[int, ...], torch.dtype]]) -> dict[torch.dtype, list[str]]:
    """The names of the floating-point weights, by dtype: one broadcast per dtype."""
    out: dict[torch.dtype, list[str]] = {}
    for name, _, dtype in spec:
        out.setdefault(dtype, []).append(name)
    return out


def broadcast(group: Any, tensor: torch.Tensor) -> Any:
    options = dist.BroadcastOptions()
    options.rootRank = 0
    return group.broadcast([tensor], options)


# ------------------------------------------------------------------ the trainer's end


class EngineError(RuntimeError):
    """The engine process died, failed, or stopped answering: the run ends (the last checkpoint resumes)."""


class AsyncSource:
    """The trainer's end of an engine process: requests ahead, results in, weights out."""

    def __init__(
        self,
        cfg: Config,
        acc: Any,
        policy: torch.nn.Module,
        samples: list[Sample],
        rewards: Any,
        timer: Any,
        rewarder: Rewarder | None = None,
    ) -> None:
        self.cfg, self.acc, self.policy, self.timer, self.rewarder = cfg, acc, policy, timer, rewarder
        self.k = cfg.rollout.max_staleness
        self.request: Callable[[int, int], Request] | None = None
        self.queued: dict[tuple[int, int], Request] = {}  # sent, not yet taken
        self.arrived: dict[tuple[int, int], Scored] = {}
        self.ahead = -1  # the last step whose first request was sent
        self.steps = 1 << 62  # the run's steps: nothing is requested past them (set by the trainer)
        self.version = -1
        self.in_flight: list[Any] = []  # the broadcasts of the last publish (and the buffers they read)
        self.last_wait = 0.0
        self.weight_sync_s = 0.0
        state = sharding.full_state_dict(acc.unwrap_model(policy), everywhere=True)
        self.spec = weight_spec(state)
        ctx = mp.get_context("spawn")
        # results come through a pipe whose writing end only the engine holds: if it dies mid-message, the
        # trainer reads an end of file instead of waiting for the rest forever
        self.requests, self.published = ctx.Queue(), ctx.Value("q", -1)
        self.results, writer = ctx.Pipe(duplex=False)
        port = free_port()
        timeout = datetime.timedelta(seconds=cfg.rollout.engine_timeout_s)
        # the engine scores what it generates, unless a reward callable given from Python cannot be sent to it
        # (a lambda, a closure, a function of __main__): then the trainer scores each request as it arrives
        travels = rewarder is None or portable(rewards)
        if not travels:
            log.info("async rollouts: the reward callables cannot be sent to the engine process: scored here")
        self.process = ctx.Process(
            target=engine_main,
            args=(
                cfg,
                rewards if travels else None,
                travels,
                samples,
                self.spec,
                port,
                self.requests,
                writer,
                self.published,
                os.getpid(),
            ),
            name="observe-r1-engine",
        )
        with engine_gpu(cfg):
            self.process.start()  # not a daemon: it has reward workers of its own; it ends with the trainer
        writer.close()
        atexit.register(self.close)
        store = dist.TCPStore("127.0.0.1", port, 2, True, timeout=timeout)
        self.group = dist.ProcessGroupGloo(store, 0, 2, timeout)
        log.info(
            "async rollouts: engine process %d (%s backend), at most %d version(s) behind the policy",
            self.process.pid,
            cfg.rollout.backend,
            self.k,
        )

    # weights
    def publish(self, version: int) -> None:
        """Send the policy's weights (version `version`) to the engine; returns once they are on their way
        (the previous broadcast must have arrived first: the engine takes them between requests, or between
        segments with rollout.in_flight)."""
        started = time.perf_counter()
        self._finish_broadcast()
        state = sharding.full_state_dict(self.acc.unwrap_model(self.policy), everywhere=True)
        buffers = [
            torch.cat([state[k].detach().reshape(-1).cpu() for k in names])
            for names in flat_buckets(self.spec).values()
        ]
        with self.published.get_lock():
            self.published.value = version
        self.in_flight = [(broadcast(self.group, b), b) for b in buffers]
        self.version = version
        self.weight_sync_s = time.perf_counter() - started

    def _finish_broadcast(self) -> None:
        for work, _ in self.in_flight:
            try:
                self._wait(work.is_completed, "the weights to arrive in the engine")
                work.wait()
            except RuntimeError as e:  # the connection broke: say why when the engine is gone
                if isinstance(e, EngineError):
                    raise
                self.process.join(timeout=5)
                self._check_engine()
                raise EngineError(f"sending the weights to the engine failed: {e}") from e
        self.in_flight = []

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        """Poll `done` until true; the engine's death or silence past `rollout.engine_timeout_s` ends the run."""
        started = time.perf_counter()
        while not done():
            self._check_engine()
            if time.perf_counter() - started > self.cfg.rollout.engine_timeout_s:
                raise EngineError(
                    f"waited {self.cfg.rollout.engine_timeout_s:g} s (rollout.engine_timeout_s) for "
                    f"{what}: the engine process {self.process.pid} is stuck"
                )
            time.sleep(POLL_S)

    def _check_engine(self) -> None:
        self._collect()
        if self.process.exitcode is not None or not self.process.is_alive():
            code = self.process.exitcode
            how = (
                f"was killed by signal {-code}"
                if code is not None and code < 0
                else f"exited with code {code}"
            )
            raise EngineError(
                f"the rollout engine process {self.process.pid} {how}; the run stops here. Run the "
                "same command to resume from the last checkpoint (queued groups are regenerated)"
            )

    def _collect(self) -> None:
        while self.process.exitcode is None or self.results.poll():
            try:
                if not self.results.poll():
                    return
                item = self.results.recv()
            except (EOFError, OSError):  # the engine is gone (mid-message, perhaps): say how
                self.process.join(timeout=10)
                return
            if isinstance(item, str):
                raise EngineError(f"the rollout engine process failed:\n{item}")
            self.arrived[item.request.key] = item

    # requests
    def _send(self, req: Request) -> None:
        self.queued[req.key] = req
        self.requests.put(req)

    def take(self, step: int, attempt: int) -> Scored:
        """The scored groups of (step, attempt); first queues the requests of the steps up to step + k (each
        needs policy version >= its step - k, which exists by then). A retry (dynamic sampling) is generated by
        the newest weights."""
        assert self.request is not None
        if attempt == 0:
            for ahead in range(self.ahead + 1, min(step + self.k, self.steps - 1) + 1):
                req = self.request(ahead, 0)
                req.min_version = max(0, ahead - self.k)
                self._send(req)
                self.ahead = ahead
        else:
            req = self.request(step, attempt)
            req.min_version = self.version
            self._send(req)
        started = time.perf_counter()
        self._wait(lambda: (step, attempt) in self.arrived, f"the groups of step {step}")
        self.last_wait = time.perf_counter() - started
        scored = self.arrived.pop((step, attempt))
        self.queued.pop((step, attempt))
        if isinstance(scored.got, Generated):
            assert self.rewarder is not None
            scored.got = score(self.rewarder, scored.got, self.timer)
        staleness = step - (scored.version or 0)
        if staleness > self.k:  # cannot happen by construction: the engine waits for min_version
            raise EngineError(
                f"step {step} got groups {staleness} versions old (rollout.max_staleness={self.k})"
            )
        scored.metrics |= {
            "async/staleness": float(staleness),
            "async/trainer_wait_s": self.last_wait,
            "async/weight_sync_s": self.weight_sync_s,
            "async/queued_groups": float(sum(len(r.ids) for r in self.queued.values())),
            "async/bound_groups": float(len(scored.request.ids) * (self.k + 1)),
        }
        return scored

    def generating(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engine process generates

    def pending(self) -> list[dict]:
        """The draws queued for later steps (saved with a checkpoint; a resume generates them again)."""
        return [
            {"step": r.step, "attempt": r.attempt, "drawn": r.drawn}
            for r in sorted(self.queued.values(), key=lambda r: r.key)
        ]

    def resume(self, pending: list[Request]) -> None:
        """Queue the requests a checkpoint had queued (their prompts were drawn already) before any new one."""
        for req in pending:
            req.min_version = max(0, req.step - self.k)
            self._send(req)
            self.ahead = max(self.ahead, req.step)

    def close(self) -> None:
        """End the engine: at once when idle; a run that stops early (a callback, a signal, an error) does not
        wait for the requests still queued (nothing will train on them): after a short grace it is killed."""
        if self.process.exitcode is not None:
            return
        with contextlib.suppress(Exception):
            self.requests.put(None)
        self.process.join(timeout=CLOSE_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


@contextlib.contextmanager
def engine_gpu(cfg: Config):
    """On GPUs, the engine process about to start sees one GPU: this process's + `rollout.engine_gpu_offset`."""
    if not torch.cuda.is_available():
        yield
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    index = torch.cuda.current_device() + cfg.rollout.engine_gpu_offset
    if index >= len(devices):
        raise EngineError(
            f"rollout.engine_gpu_offset={cfg.rollout.engine_gpu_offset}: GPU {index} does not exist "
            f"({len(devices)} visible)"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[index]
    try:
        yield
    finally:
        if visible is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible


def make_source(
    cfg: Config,
    acc: Any,
    policy: torch.nn.Module,
    backend: RolloutBackend | None,
    rewarder: Rewarder,
    samples: list[Sample],
    encoder: Any,
    rewards: Any,
    timer: Any,
):
    """`rollout.mode`: async with max_staleness >= 1 starts an engine process; otherwise the synchronous loop."""
    if cfg.rollout.mode == "async" and cfg.rollout.max_staleness > 0:
        return AsyncSource(cfg, acc, policy, samples, rewards, timer, rewarder)
    assert backend is not None
    return SyncSource(cfg, acc, policy, backend, rewarder, samples, encoder, timer)


# ------------------------------------------------------------------ the engine process


def behaviour_logprobs(cfg: Config, model: torch.nn.Module, rollout: Rollout, encoder: Any) -> torch.Tensor:
    """[B, T] the generating policy's log-probs of its tokens (the HF engine scores them after generating)."""
    out = torch.zeros(rollout.completion_ids.shape)
    for idx in chunks(range(len(rollout)), cfg.optim.micro_batch_size):
        logp, _ = completion_logprobs(
            model, sequence_inputs(rollout, idx, encoder), cfg.rollout.temperature, packed=cfg.model.packing
        )
        out[idx, : logp.shape[1]] = logp.float().cpu()
    return out


def in_flight(backend: Any, rollout: Rollout) -> dict[str, float]:
    """A partial rollout's metrics: the share of responses generated by more than one policy version, and how
    often the request was begun again (rollout.in_flight)."""
    if not isinstance(backend, PartialRollout) or rollout.versions is None:
        return {}
    mask = rollout.completion_mask.bool()
    newest = rollout.versions.masked_fill(~mask, -1).max(1).values
    oldest = rollout.versions.masked_fill(~mask, 2**62).min(1).values
    return {
        "async/partial_responses": float((newest > oldest).float().mean()),
        "async/restarts": float(backend.restarts),
    }


def engine_main(
    cfg: Config,
    rewards: Any,
    scores: bool,
    samples: list[Sample],
    spec: list,
    port: int,
    requests: Any,
    results: Any,
    published: Any,
    parent: int,
) -> None:
    """The engine process: build the policy, take the trainer's weights when published, generate and score
    each request with weights at least its `min_version`, send the result. Ends on None, or when the
    trainer is gone."""
    # Ctrl-C and SIGTERM (sent to the whole process group) are the trainer's: it finishes its step, which may
    # need this engine, saves and closes it; a trainer that dies instead is noticed below (its parent is gone)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    rewarder = None
    outbox: queue.Queue = queue.Queue()  # sent by a thread: the engine generates on while the trainer trains

    def send() -> None:
        while (item := outbox.get()) is not None:
            with contextlib.suppress(OSError):
                results.send(item)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        if cfg.rollout.engine_threads:
            torch.set_num_threads(cfg.rollout.engine_threads)
        timeout = datetime.timedelta(seconds=cfg.rollout.engine_timeout_s)
        store = dist.TCPStore("127.0.0.1", port, 2, False, timeout=timeout)
        group = dist.ProcessGroupGloo(store, 1, 2, timeout)
        runtime.seed_everything(cfg.seed)
        encoder = setup.load_encoder(cfg)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the one GPU it was given
        model = setup.build_policy(cfg).eval().to(device)
        rewarder = Rewarder.from_config(cfg.reward, rewards) if scores else None
        backend = setup.make_backend(cfg, model, encoder)
        generator = getattr(backend, "backend", backend)  # inside a multi-turn rollout
        if isinstance(generator, HFRollout):
            generator.record_logprobs = True  # the behaviour policy's log-probs, as it samples
        sampling, system = sampling_of(cfg), system_prompt(cfg.data.system_prompt)
        buckets = [(names, dtype) for dtype, names in flat_buckets(spec).items()]
        shapes = {name: shape for name, shape, _ in spec}
        version, idle, idle_since = -1, 0.0, time.perf_counter()

        def take_weights() -> int:
            v = published.value
            if v <= version:
                return version
            loaded: dict[str, torch.Tensor] = {}
            for names, dtype in buckets:
                buffer = torch.empty(sum(torch.Size(shapes[n]).numel() for n in names), dtype=dtype)
                broadcast(group, buffer).wait()
                loaded |= dict(
                    zip(
                        names,
                        torch.split(buffer, [torch.Size(shapes[n]).numel() for n in names]),
                        strict=True,
                    )
                )
            state = {n: t.view(shapes[n]).to(device) for n, t in loaded.items()}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected:
                raise RuntimeError(f"the trainer's weights do not fit the engine's model: {unexpected[:5]}")
            backend.update_weights(model)
            return v

        def between() -> int:  # a partial rollout looks for new weights between its segments
            nonlocal version
            version = take_weights()
            return version

        if cfg.rollout.in_flight != "finish":
            restart = cfg.rollout.in_flight == "restart"
            backend = PartialRollout(backend, encoder, cfg.rollout.segment_tokens, between, restart)

        while True:
            if os.getppid() != parent:
                return  # the trainer is gone (killed): nothing to generate for
            version = take_weights()
            try:
                req = requests.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if req is None:
                return
            while version < req.min_version:
                if os.getppid() != parent:
                    return
                version = take_weights()
                time.sleep(POLL_S)
            idle += time.perf_counter() - idle_since
            started = time.perf_counter()
            with runtime.autocast(device, cfg.model.dtype, generation=True):
                got = generate(
                    backend, encoder, [samples[i] for i in req.indices], req.ids, sampling, system, cfg.seed
                )
            generated = time.perf_counter() - started
            made_by = version  # the oldest version in the responses: the one the staleness rule reads
            if got.rollout.versions is not None:
                made_by = int(got.rollout.versions[:, 0].min())
            if got.rollout.logprobs is None:
                with torch.no_grad(), runtime.autocast(device, cfg.model.dtype):
                    got.rollout.logprobs = behaviour_logprobs(cfg, model, got.rollout, encoder)
            result = got if rewarder is None else score(rewarder, got)
            metrics = {
                "async/engine_busy_s": time.perf_counter() - started,
                "async/engine_generate_s": generated,
                "async/engine_idle_s": idle,
            } | in_flight(backend, got.rollout)
            outbox.put(Scored(req, result, made_by, metrics))
            idle, idle_since = 0.0, time.perf_counter()
    except Exception:  # noqa: BLE001 - any failure goes to the trainer, which names it and stops
        outbox.put(traceback.format_exc())
    finally:
        outbox.put(None)
        sender.join(timeout=60)
        if rewarder is not None:
            rewarder.close()
