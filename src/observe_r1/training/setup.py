"""Setting up a training run: its inputs (a real checkpoint and data files, or the toy model and synthetic
data when the config asks for them), the encoder, data, policy, reference and metrics tracker.
Imports config, data, models, toy and the other training modules."""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import AutoConfig

from observe_r1.algos import shrink_perturb
from observe_r1.config import Config, ConfigError, dump_config, to_dict
from observe_r1.data.dataset import Columns, Sample, load_samples
from observe_r1.data.prompts import system_prompt
from observe_r1.data.sources import resolve
from observe_r1.data.video import VideoSampling
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import add_score_head, fresh_init, frozen, load_model, prepare_policy
from observe_r1.rollout.base import RolloutBackend
from observe_r1.rollout.hf import HFRollout
from observe_r1.rollout.multiturn import with_tools
from observe_r1.rollout.vllm import VLLMRollout
from observe_r1.tools.base import schema_of
from observe_r1.tools.builtin import make_tools
from observe_r1.toy import logic, sketch, synth, tiny, toolcalc, video, zoom
from observe_r1.training import rundir
from observe_r1.training.checkpoint import RunState
from observe_r1.training.loop import Callback
from observe_r1.training.runtime import reference_dtype
from observe_r1.training.tracking import Tracker

log = logging.getLogger(__name__)

TINY = "tiny"  # model.path that builds a random tiny Qwen2.5-VL into OUTPUT/base-model
COLD_START = "cold_start"  # model.path of the shipped cold-start checkpoint (the demo's; observe_r1/assets)
SYNTH = "synth"  # data.train / data.test entry that renders the synthetic ladder into OUTPUT/data
LOGIC = "logic"  # ... that renders Knights-and-Knaves puzzles (text only) into OUTPUT/data/logic
TOOLCALC = "toolcalc"  # ... large multiplications, where a tool helps (text) into OUTPUT/data/toolcalc
ZOOM = "zoom"  # ... digits legible only after a `crop` into OUTPUT/data/zoom
VIDEO = "video"  # ... clips of moving, blinking, appearing shapes (toy.video) into OUTPUT/data/video
SKETCH = "sketch"  # ... the ladder as preference pairs (reference `chosen`, long form `rejected`): OUTPUT/data/sketch
BUILT = {
    SYNTH: "",
    LOGIC: "logic",
    TOOLCALC: "toolcalc",
    ZOOM: "zoom",
    VIDEO: "video",
    SKETCH: "sketch",
}  # OUTPUT/data/<folder>
TOY_WRITERS: dict[str, Callable[..., Any]] = {  # the built entries but SYNTH, into OUTPUT/data/<name>
    LOGIC: logic.write_dataset,
    TOOLCALC: toolcalc.write_dataset,
    ZOOM: zoom.write_dataset,
    VIDEO: video.write_dataset,
    SKETCH: sketch.write_pairs,
}


@dataclass
class Inputs:
    """What the Python API hands a recipe beside its config (observe_r1.recipes.api): datasets in memory or
    paths replacing `data.train` / `data.test`, reward callables by term name, and step-end callbacks."""

    train: Any = None  # a list of dicts, a datasets.Dataset, or paths (observe_r1.data.sources)
    test: Any = None
    rewards: dict[str, Callable[..., list]] = field(default_factory=dict)
    callbacks: list[Callback] = field(default_factory=list)
    stopped: bool = False  # set when a callback stopped the run (a staged run then stops too)


def prepare_inputs(cfg: Config, acc: Accelerator, given: Inputs | None = None) -> Config:
    """Resolve `model.path: tiny` and `data.train / data.test: [synth]` by building them into the output
    directory (once; atomically), and write the resolved config there. Returns the resolved config."""
    out = Path(cfg.logging.output_dir)
    if not cfg.model.path:
        raise ConfigError(
            "model.path is empty: give a checkpoint folder, or `tiny` to build a random tiny Qwen2.5-VL into the "
            "output directory (`observe-r1 tiny-model DIR` writes one where you like)"
        )
    if cfg.model.path == COLD_START:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(cold_start_path())))
    found = any((Path(cfg.model.path) / name).is_file() for name in ("config.json", "adapter_config.json"))
    if cfg.model.path != TINY and not found:
        raise ConfigError(
            f"model.path: no model at {cfg.model.path} (no config.json there); the hub is not read here: download "
            f"the checkpoint (`huggingface-cli download {cfg.model.path} --local-dir DIR`) and give DIR"
            if not Path(cfg.model.path).exists()
            else f"model.path: {cfg.model.path} has no config.json: give the folder of a Hugging Face checkpoint"
        )
    if not cfg.data.train and (given is None or given.train is None):
        raise ConfigError(
            "data.train is empty: give jsonl / parquet files, or [synth] for the synthetic ladder"
        )
    for key, entries, replaced in (("data.train", cfg.data.train, given and given.train is not None),
                                   ("data.test", cfg.data.test, given and given.test is not None)):  # fmt: skip
        check_data_entries(key, [] if replaced else [e for e in entries if e not in BUILT])
    model_path = str(out / "base-model") if cfg.model.path == TINY else cfg.model.path
    data = out / "data"

    def files(names: list[str], split: str) -> list[str]:
        return [str(data / BUILT[name] / f"{split}.jsonl") if name in BUILT else name for name in names]

    claim_output(acc, out)
    if acc.is_main_process:
        if cfg.model.path == TINY and not (Path(model_path) / "config.json").is_file():
            build_atomically(
                Path(model_path),
                lambda tmp: tiny.build_tiny_vlm(tmp, size=cfg.model.tiny_size, seed=cfg.seed),
            )
        if SYNTH in cfg.data.train + cfg.data.test and not (data / "train.jsonl").is_file():
            build_atomically(data, lambda tmp: synth.write_dataset(tmp, cfg.data.synth_train, cfg.data.synth_test,
                                                                   seed=cfg.seed))  # fmt: skip
        for name, write in TOY_WRITERS.items():
            if name in cfg.data.train + cfg.data.test and not (data / name / "train.jsonl").is_file():
                data.mkdir(parents=True, exist_ok=True)
                build_atomically(data / name, functools.partial(write, train=cfg.data.synth_train,
                                                                test=cfg.data.synth_test, seed=cfg.seed))  # fmt: skip
    acc.wait_for_everyone()
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, path=model_path),
        data=dataclasses.replace(
            cfg.data, train=files(cfg.data.train, "train"), test=files(cfg.data.test, "test")
        ),
    )
    if acc.is_main_process:
        dump_config(cfg, out / "config.yaml")
    return cfg


def claim_output(acc: Accelerator, out: Path) -> None:
    """The main process takes the output directory for this run (`training.rundir`); every process raises
    OutputDirBusy when another run holds it."""
    busy = None
    if acc.is_main_process:
        try:
            rundir.claim(out)
        except rundir.OutputDirBusy as e:
            busy = str(e)
    if acc.num_processes > 1:
        busy = broadcast_object_list([busy])[0]
    if busy:
        raise rundir.OutputDirBusy(busy)


def cold_start_path() -> Path:
    """The shipped cold-start checkpoint: a `small` tiny Qwen2.5-VL after SFT on the synthetic ladder."""
    path = Path(str(resources.files("observe_r1") / "assets" / "cold_start_small"))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the shipped cold-start checkpoint is missing at {path}; rebuild it with "
            "`observe-r1 sft configs/cold_start_small.yaml --export src/observe_r1/assets/cold_start_small`"
        )
    return path


def check_data_entries(key: str, entries: list[str]) -> None:
    """Every data entry names something that exists, before anything is written or loaded."""
    for entry in entries:
        try:
            resolve(entry)
        except FileNotFoundError as e:
            hint = (" The shipped paper configs point at data/neuraladder/, which does not ship: build it from your "
                    "data with `observe-r1 ladder build` (docs/ladder.md)" if "neuraladder" in entry else "")  # fmt: skip
            raise ConfigError(f"{key}: {e}.{hint}") from None


def build_atomically(final: Path, build: Callable[[Path], object]) -> None:
    """`build(path)` into a temporary folder renamed to `final` when complete: a run killed while building
    leaves no partial model or dataset for the next run to pick up."""
    tmp = final.with_name(f".tmp-{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    build(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def load_encoder(cfg: Config, path: str | None = None) -> ChatEncoder:
    """The chat encoder of `model.path` (or of the checkpoint at `path`) with `data.*`'s prompt limits."""
    encoder = ChatEncoder.from_pretrained(
        path or cfg.model.path,
        trust_remote_code=cfg.model.trust_remote_code,
        max_prompt_length=cfg.data.max_prompt_length,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
        video=VideoSampling.of(cfg.data),
    )
    encoder.system_prompt = cfg.data.system_prompt  # recorded in every checkpoint (observe_r1.json)
    mt = cfg.rollout.multi_turn
    if mt.enabled and mt.layout == "chat":  # the prompts list the tools
        encoder.tools = [schema_of(t) for t in make_tools(cfg.tools).values()]
    return encoder


def load_data(
    cfg: Config, encoder: ChatEncoder, given: Inputs | None = None
) -> tuple[list[Sample], list[Sample]]:
    """The train and test samples: of the config's files, or those given from Python."""
    system, columns = system_prompt(cfg.data.system_prompt), Columns.of(cfg.data)
    given = given or Inputs()
    train_data = cfg.data.train if given.train is None else given.train
    test_data = cfg.data.test if given.test is None else given.test
    train = load_samples(train_data, encoder, system, cfg.data.max_bad_row_fraction, columns)
    test = (
        load_samples(test_data, encoder, system, cfg.data.max_bad_row_fraction, columns)
        if len(test_data)
        else []
    )
    if cfg.checkpoint.best_metric and not test:
        raise ConfigError("checkpoint.best_metric needs data.test: the evaluation split it is measured on")
    return train, test


def build_policy(cfg: Config, score_head: bool = False) -> torch.nn.Module:
    """The policy from `model.path`, warm-started by shrink-and-perturb when asked, then prepared (LoRA, ...).
    `score_head`: a reward model (`add_score_head`; a checkpoint that is one already keeps its head)."""
    model = load_model(
        cfg.model.path, cfg.model.attn_implementation, trust_remote_code=cfg.model.trust_remote_code
    )
    if cfg.model.warm_start == "shrink_perturb":
        fresh = fresh_init(model, cfg.seed).state_dict()
        model.load_state_dict(shrink_perturb(model.state_dict(), fresh, cfg.model.shrink, cfg.model.perturb))
    if score_head and not hasattr(model, "score"):  # after the warm start: a fresh model has no head
        add_score_head(model, seed=cfg.seed)
    return prepare_policy(model, cfg.model)


def load_frozen(cfg: Config, path: str) -> tuple[torch.nn.Module, ChatEncoder]:
    """A model that scores or judges beside the policy (a reward model, a judge): frozen, on this process's
    device, with its own encoder (`data.*`'s prompt limits)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = frozen(load_model(path, trust_remote_code=cfg.model.trust_remote_code)).to(device)
    log.info("%s loaded on %s", path, device)
    return model, load_encoder(cfg, path)


def build_reference(cfg: Config, device: torch.device) -> torch.nn.Module | None:
    """The frozen KL reference, when the KL is on and the policy is not LoRA (then the reference is the
    policy with its adapters disabled: no second copy in memory)."""
    if cfg.algorithm.kl_mode == "off" or cfg.model.lora_rank:
        return None
    reference = frozen(
        load_model(
            cfg.model.path,
            cfg.model.attn_implementation,
            trust_remote_code=cfg.model.trust_remote_code,
            dtype=reference_dtype(cfg, device),
        )
    )
    return reference if cfg.parallel.strategy == "fsdp" else reference.to(device)  # FSDP: moved once sharded


def make_backend(cfg: Config, policy: torch.nn.Module, encoder: ChatEncoder) -> RolloutBackend:
    """`rollout.backend`: the policy itself generating (hf), or a colocated vLLM engine (vllm)."""
    if cfg.rollout.backend == "vllm":
        config = AutoConfig.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        positions = config.get_text_config().max_position_embeddings
        max_len = min(cfg.data.max_prompt_length + cfg.rollout.max_new_tokens, positions)
        return with_tools(
            cfg, VLLMRollout(cfg.model.path, encoder, cfg.rollout.vllm, cfg.seed, max_len), encoder
        )
    return with_tools(cfg, HFRollout(policy, encoder), encoder)


def make_tracker(cfg: Config, run: RunState, acc: Accelerator) -> Tracker | None:
    if not acc.is_main_process:
        return None
    return Tracker(cfg.logging, run.history, to_dict(cfg))
