"""`observe-r1 plan CONFIG`: will this run fit, and what will it cost, before renting the GPUs.

The model is built on the meta device from its `config.json` (no weights), so parameter counts are exact:
total, trainable (LoRA adapters, a frozen vision tower), the largest FSDP unit (a decoder layer or a vision
block) and the root unit (embeddings, head, norms). Memory per GPU is then the sum of stated terms, for the
two phases of a step, and the peak is the larger:

- model states: fp32 weights (4 B/param), fp32 gradients (4 B per trainable param), AdamW's two fp32 moments
  (8 B per trainable param); whole on every GPU with DDP, 1/W of them with FSDP (W = GPUs x nodes), none on
  the GPU with FSDP + offload (CPU memory instead);
- AdamW's step: one fp32 temporary per trained parameter (its foreach implementation), after the backward
  has freed the activations (so only what exceeds them is added); DDP over several processes: gradient
  buckets as large as the gradients;
- FSDP's working set: the root unit and two decoder units gathered in the compute dtype (the one running and
  the one prefetched) and the largest unsharded fp32 gradient of a unit (the root's: embeddings and head);
- the frozen KL reference (bf16 on GPU) when the KL is on and the policy is not LoRA: whole with DDP, 1/W
  with FSDP;
- training activations of one micro-batch of T = micro x (prompt + response) tokens, per decoder layer and
  token: (6h + 2kv + 4i) values (norm input, q, k, v, attention output, o-proj input, residual, norm output;
  gate, up, activation, product; sdpa/flash attention keeps no T x T matrix); with gradient checkpointing
  only the layer input (h) per layer plus one layer's full set; the vision tower likewise per patch, for
  the distinct images of a micro-batch (the n responses to a prompt share its encoded image); and the
  response positions' logits in fp32, three copies (logits, scaled, softmax/gradient): 12 x T_response x V
  bytes;
- rollout: with HF generate the whole model gathered in the compute dtype (FSDP) plus the KV cache of the
  generating rows (2 x layers x kv x (prompt + response) values per row); with vLLM the engine's reservation
  (`gpu_memory_utilization` x GPU memory, weights and KV cache inside it), released during training with sleep
  mode (so the two phases do not add up) and held all the time without it.

A GPU fits a run when the peak stays under its memory minus 2 GiB (CUDA context, NCCL buffers, allocator
fragmentation). Step time comes from FLOPs at a stated model FLOPs utilisation (MFU): 6 x params x tokens for
each training pass (8x with checkpointing: the forward runs twice), 2 x params x tokens for each log-prob pass
(rollout policy, reference), 2 x params x tokens to generate, at lower MFU (decoding is memory-bound).
Imports config.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from observe_r1.config import Config, ConfigError
from observe_r1.models.inputs import remote_code
from observe_r1.models.policy import head_chunk_rows
from observe_r1.toy.tiny import tiny_model_config
from observe_r1.training.setup import COLD_START, TINY, cold_start_path

GIB = 1024**3
RESERVED_GIB = 2.0  # CUDA context, NCCL buffers, fragmentation


@dataclass
class Hardware:
    gpus: int = 8  # per node
    nodes: int = 1
    memory_gib: float = 80.0
    tflops: float = 312.0  # dense bf16 per GPU (A100 312, H100 SXM 989)
    mfu_train: float = 0.35
    mfu_rollout: float = 0.10
    price_per_gpu_hour: float = 0.0
    device: str = "cuda"  # cpu: fp32 compute, no reserve (validation runs on this machine)
    # async rollouts: GPUs per node that run engines (the others train); 0 = engines beside the trainers
    engine_gpus: int = 0

    @property
    def world(self) -> int:
        return self.gpus * self.nodes


@dataclass
class Shape:
    """What the memory model needs from the architecture, counted on the meta-device model."""

    total: int
    trainable: int
    vision: int
    largest_unit: int
    root_unit: int
    hidden: int
    intermediate: int
    kv: int  # key/value width: kv heads x head dim
    layers: int
    vocab: int
    vision_hidden: int = 0
    vision_intermediate: int = 0
    vision_layers: int = 0
    patch: int = 14  # pixels per patch side
    merge: int = 2  # patches merged per side into one image token


SHIPPED = Path(str(resources.files("observe_r1") / "assets" / "models"))
# published config.json files shipped with observe-r1, by the model's name (a hub id's last part or a folder's
# name, lower case; a base model has its instruct model's architecture)
KNOWN_MODELS = {
    "qwen2.5-vl-3b-instruct": "qwen2_5_vl_3b.json",
    "qwen2.5-vl-7b-instruct": "qwen2_5_vl_7b.json",
    "qwen2-vl-2b-instruct": "qwen2_vl_2b.json",
    "qwen2-vl-7b-instruct": "qwen2_vl_7b.json",
}


def load_model_config(path: str | Path, trust_remote_code: bool = False) -> Any:
    """A `config.json` file, or a checkpoint directory holding one."""
    with remote_code(path, trust_remote_code):
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)


def model_config_of(cfg: Config, given: str | None = None) -> tuple[Any, str]:
    """The architecture to plan, and where it came from, never downloaded: `given` (--model-config),
    `model.path`'s own config.json, the built-in tiny model's spec (`model.path: tiny`), the shipped cold
    start, or the published config shipped for a known model named by `model.path` (a hub id such as
    Qwen/Qwen2.5-VL-3B-Instruct, or a folder of that name that is not here)."""
    path = given or cfg.model.path
    trust = cfg.model.trust_remote_code
    if path == TINY and not given:
        return tiny_model_config(cfg.model.tiny_size, cfg.seed), f"the built-in {cfg.model.tiny_size} model"
    if path == COLD_START and not given:
        path = str(cold_start_path())
    if path and Path(path).exists():
        return load_model_config(path, trust), path
    name = Path(path).name.lower()
    known = KNOWN_MODELS.get(name) or KNOWN_MODELS.get(f"{name}-instruct")
    if known:
        return load_model_config(SHIPPED / known), f"{path}: the published config shipped as {known}"
    raise ConfigError(
        f"plan: no model config at {path!r}, and it names none of the models whose config ships "
        f"with observe-r1 ({', '.join(KNOWN_MODELS)}): pass --model-config (a config.json or a "
        "checkpoint directory); the weights are not needed"
    )


def meta_model(config: Any) -> torch.nn.Module:
    is_vlm = getattr(config, "vision_config", None) is not None
    auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def lora_parameters(model: torch.nn.Module, rank: int, targets: list[str]) -> int:
    """Adapter parameters: rank x (in + out) for every targeted linear layer of the language model."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and name.rsplit(".", 1)[-1] in targets
        and ".visual." not in f".{name}."
    )


def shape_of(config: Any, cfg: Config) -> Shape:
    model = meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    tower = getattr(getattr(model, "model", model), "visual", None)
    vision = sum(p.numel() for p in tower.parameters()) if tower is not None else 0
    kinds = set(getattr(model, "_no_split_modules", None) or [])
    units = [sum(p.numel() for p in m.parameters()) for m in model.modules() if type(m).__name__ in kinds]
    trained_vision = 0 if cfg.model.freeze_vision else vision
    if cfg.model.lora_rank:
        trainable = (
            lora_parameters(model, cfg.model.lora_rank, cfg.model.lora_target_modules) + trained_vision
        )
    else:
        trainable = total - vision + trained_vision
    text = getattr(config, "text_config", None) or config
    text = text if getattr(text, "hidden_size", None) else config
    heads = text.num_attention_heads
    v = getattr(config, "vision_config", None)
    return Shape(
        total=total,
        trainable=trainable,
        vision=vision,
        largest_unit=max(units, default=total),
        root_unit=total - sum(units),
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        kv=getattr(text, "num_key_value_heads", heads) * (text.hidden_size // heads),
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        vision_hidden=vision_width(v)[0],
        vision_intermediate=vision_width(v)[1],
        vision_layers=getattr(v, "depth", 0) if v else 0,
        patch=getattr(v, "patch_size", 14) if v else 14,
        merge=getattr(v, "spatial_merge_size", 2) if v else 2,
    )


def vision_width(v: Any) -> tuple[int, int]:
    """(width, MLP width) of a vision tower's config: Qwen2-VL names its width embed_dim (its hidden_size is the
    language model's) and sizes its MLP by mlp_ratio; Qwen2.5-VL and Qwen3-VL say hidden_size and
    intermediate_size. (0, 0) without a tower."""
    if v is None:
        return 0, 0
    width = int(getattr(v, "embed_dim", 0) or getattr(v, "hidden_size", 0))
    return width, int(getattr(v, "intermediate_size", 0) or width * getattr(v, "mlp_ratio", 0))


@dataclass
class Plan:
    """Bytes per GPU by term, for the training and the rollout phase; the verdict; the step time."""

    strategy: str
    terms: dict[str, float] = field(default_factory=dict)
    training: list[str] = field(default_factory=list)  # the terms present while training
    rollout: list[str] = field(default_factory=list)
    cpu_per_node: float = 0.0
    usable: float = 0.0
    step_s: float = 0.0
    train_s: float = 0.0  # the step's training passes
    rollout_s: float = 0.0  # its generation
    tokens_per_step: float = 0.0
    notes: list[str] = field(default_factory=list)

    def phase(self, names: list[str]) -> float:
        return sum(self.terms[n] for n in names)

    @property
    def peak(self) -> float:
        return max(self.phase(self.training), self.phase(self.rollout))

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable


def image_tokens(cfg: Config, shape: Shape) -> tuple[int, int]:
    """(patches, image tokens) of one image at `data.max_pixels`: the worst case the config allows."""
    patches = cfg.data.max_pixels // (shape.patch**2)
    return patches, patches // (shape.merge**2)


def estimate(cfg: Config, shape: Shape, hw: Hardware, prompt_tokens: int | None = None,
             response_tokens: int | None = None) -> Plan:  # fmt: skip
    """The memory per GPU and the step time of `cfg` on `hw` (see the module docstring for each term)."""
    strategy = cfg.parallel.strategy + (
        "+offload" if cfg.parallel.strategy == "fsdp" and cfg.parallel.offload else ""
    )
    plan = Plan(strategy=strategy)
    split = disaggregated(cfg, hw)
    w, t = hw.world - hw.engine_gpus * hw.nodes if split else hw.world, plan.terms
    gpu = hw.device == "cuda"
    compute = 2 if gpu else 4  # bytes per value: bf16 on GPU, fp32 on CPU
    patches, img_tokens = image_tokens(cfg, shape) if shape.vision else (0, 0)
    prompt = prompt_tokens or min(cfg.data.max_prompt_length, img_tokens + 128)
    response = response_tokens or cfg.rollout.max_new_tokens
    micro = cfg.optim.micro_batch_size
    states = 4 * shape.total + 12 * shape.trainable
    fsdp = cfg.parallel.strategy == "fsdp"
    offload = fsdp and cfg.parallel.offload
    t["weights + grads + AdamW"] = 0.0 if offload else states / (w if fsdp else 1)
    plan.cpu_per_node = states / w * hw.gpus if offload else 0.0
    # AdamW's foreach step holds one temporary per trained parameter (sqrt of the second moment); DDP with
    # several processes keeps its gradient buckets beside the gradients
    t["optimizer step temporaries"] = 0.0 if offload else 4 * shape.trainable / (w if fsdp else 1)
    t["DDP gradient buckets"] = 4 * shape.trainable if not fsdp and w > 1 else 0.0
    t["FSDP working set"] = (
        compute * (shape.root_unit + 2 * shape.largest_unit) + 4 * max(shape.root_unit, shape.largest_unit)
        if fsdp
        else 0.0
    )
    reference = cfg.algorithm.kl_mode != "off" and not cfg.model.lora_rank
    ref_bytes = 2 if gpu else 4
    t["KL reference"] = ref_bytes * shape.total / (w if fsdp else 1) if reference else 0.0
    tokens = micro * (prompt + response)
    per_layer = shape.hidden * 6 + 2 * shape.kv + 4 * shape.intermediate
    vision_per_layer = 6 * shape.vision_hidden + 4 * shape.vision_intermediate
    # one image per prompt at max_pixels; the n responses to a prompt share its encoded image, so a micro-batch
    # holds at most the prompts of this process's mini-batch
    prompts_per_mini = max(1, cfg.optim.mini_batch_size // (w * cfg.rollout.n))
    images = min(micro, prompts_per_mini) if shape.vision else 0
    if cfg.model.gradient_checkpointing:
        text_acts = tokens * (shape.layers * shape.hidden + per_layer)
        vision_acts = images * patches * (shape.vision_layers * shape.vision_hidden + vision_per_layer)
    else:
        text_acts = tokens * shape.layers * per_layer
        vision_acts = images * patches * shape.vision_layers * vision_per_layer
    t["activations (one micro-batch)"] = compute * (text_acts + vision_acts)
    # the output head scores a chunk of positions at a time (models.policy.TokenScores): its fp32 logits, their
    # softmax and gradient
    t["logits (fp32)"] = 12.0 * min(micro * response, head_chunk_rows(shape.vocab)) * shape.vocab
    engines = hw.engine_gpus * hw.nodes if split else w
    rows = math.ceil(cfg.rollout.prompts_per_step / engines) * cfg.rollout.n
    if cfg.rollout.chunk_size:
        rows = min(rows, cfg.rollout.chunk_size)
    v = cfg.rollout.vllm
    if cfg.rollout.backend == "vllm":
        t["vLLM engine"] = v.gpu_memory_utilization * hw.memory_gib * GIB if gpu else v.kv_cache_gb * GIB
        kv_need = rows * (prompt + response) * shape.layers * 2 * shape.kv * 2
        kv_room = t["vLLM engine"] - 2 * shape.total / max(v.tensor_parallel_size, 1)
        if kv_room < kv_need:
            plan.notes.append(f"the engine's KV cache room ({kv_room / GIB:.1f} GiB after its weights) is under "
                              f"{kv_need / GIB:.1f} GiB for all {rows} rows at full length: vLLM then runs them in "
                              "waves (slower, still correct)")  # fmt: skip
        rollout_terms = ["vLLM engine"]
    else:
        t["generate: gathered weights"] = compute * shape.total if fsdp or split else 0.0
        t["generate: KV cache"] = compute * rows * (prompt + response) * shape.layers * 2 * shape.kv
        rollout_terms = ["generate: gathered weights", "generate: KV cache"]
    base = ["weights + grads + AdamW", "KL reference"]
    # the optimiser step runs after the backward has freed the activations: the larger of the two counts
    t["optimizer step temporaries"] = max(0.0, t["optimizer step temporaries"] - t["activations (one micro-batch)"]
                                          - t["logits (fp32)"])  # fmt: skip
    plan.training = base + ["optimizer step temporaries", "DDP gradient buckets", "FSDP working set",
                             "activations (one micro-batch)", "logits (fp32)"]  # fmt: skip
    plan.rollout = base + rollout_terms
    if cfg.rollout.backend == "vllm" and not (gpu and v.enable_sleep_mode):
        plan.training.append("vLLM engine")
        plan.rollout.append("FSDP working set")
    plan.usable = (hw.memory_gib - (RESERVED_GIB if gpu else 0.0)) * GIB
    if split:  # the rollout column is an engine GPU: the engine only, not the trainer's states
        plan.notes.append(
            f"async rollouts on {engines} engine GPU(s) + {w} training GPU(s): the training column "
            "is a training GPU, the rollout column an engine GPU (weights in the compute dtype + its "
            "KV cache, or vLLM's reservation)"
        )
        plan.training = [x for x in plan.training if x != "vLLM engine"]
        plan.rollout = rollout_terms
    elif (
        cfg.rollout.mode == "async" and cfg.rollout.max_staleness > 0
    ):  # an engine process beside each trainer
        t["async engine process (same GPU)"] = sum(t[x] for x in rollout_terms) + (
            0.0 if cfg.rollout.backend == "vllm" or fsdp else compute * shape.total
        )
        plan.training = [x for x in plan.training if x != "vLLM engine"] + ["async engine process (same GPU)"]
        plan.rollout = plan.training
        plan.notes.append(
            "async rollouts with the engines on the training GPUs (--engine-gpus 0): both hold memory "
            "at once and share the compute; give engines GPUs of their own to overlap them"
        )
    return with_times(plan, cfg, shape, hw, prompt, response, response_tokens, w, engines)


def disaggregated(cfg: Config, hw: Hardware) -> bool:
    """Async rollouts with engine GPUs of their own (`--engine-gpus`)."""
    if not (cfg.rollout.mode == "async" and cfg.rollout.max_staleness > 0 and hw.engine_gpus):
        return False
    if hw.engine_gpus >= hw.gpus:
        raise ConfigError(f"--engine-gpus {hw.engine_gpus} leaves no training GPU of the {hw.gpus} per node")
    return True


def with_times(
    plan: Plan,
    cfg: Config,
    shape: Shape,
    hw: Hardware,
    prompt: int,
    response: int,
    response_tokens: int | None,
    trainers: int,
    engines: int,
) -> Plan:
    """The step time: training and generation one after the other, or, with async rollouts on engine GPUs of
    their own, overlapped (the slower side sets the pace; the other waits, as `async/trainer_wait_s` and
    `async/engine_idle_s` show in a run)."""
    mean = response / 2 if not response_tokens else response
    train, rollout, plan.tokens_per_step = stage_times(cfg, shape, hw, prompt, mean, trainers, engines)
    plan.train_s, plan.rollout_s, plan.step_s = train, rollout, train + rollout
    if disaggregated(cfg, hw):
        plan.step_s = max(train, rollout)
        slower = "generation" if rollout > train else "training"
        plan.notes.append(
            f"async step ~{plan.step_s:.0f} s = the slower side ({slower}): training {train:.0f} s on "
            f"{trainers} GPU(s), generation {rollout:.0f} s on {engines} GPU(s); the same split run "
            f"synchronously: {train + rollout:.0f} s ({(train + rollout) / plan.step_s:.2f}x); colocated "
            f"on all {hw.world} GPUs: {sum(stage_times(cfg, shape, hw, prompt, mean, hw.world, hw.world)[:2]):.0f} s"
        )
    return plan


def stage_times(
    cfg: Config, shape: Shape, hw: Hardware, prompt: int, response: float, trainers: int, engines: int
) -> tuple[float, float, float]:
    """Seconds of training and of generation per rollout step on `trainers` and `engines` GPUs, and the tokens
    the step trains on (responses assumed `response` long on average)."""
    sequences = cfg.rollout.prompts_per_step * cfg.rollout.n
    tokens = sequences * (prompt + response)
    passes = 6 * (8 / 6 if cfg.model.gradient_checkpointing else 1) * cfg.optim.ppo_epochs
    asynchronous = cfg.rollout.mode == "async" and cfg.rollout.max_staleness > 0
    recompute = cfg.optim.ppo_epochs > 1 or cfg.rollout.backend == "vllm" or asynchronous
    if asynchronous and cfg.rollout.correction == "behaviour":
        recompute = False  # the ratio is taken against the engine's log-probs
    passes += 2 * (cfg.algorithm.kl_mode != "off") + 2 * recompute
    per_gpu = hw.tflops * 1e12
    train = passes * shape.total * tokens / (trainers * per_gpu * hw.mfu_train)
    rollout = 2 * shape.total * tokens / (engines * per_gpu * hw.mfu_rollout)
    return train, rollout, tokens


SUGGESTIONS = [
    ("model.gradient_checkpointing=true", lambda c: setattr(c.model, "gradient_checkpointing", True)),
    ("optim.micro_batch_size=1", lambda c: setattr(c.optim, "micro_batch_size", 1)),
    ("parallel.strategy=fsdp", lambda c: setattr(c.parallel, "strategy", "fsdp")),
    ("parallel.offload=true", lambda c: c.parallel.__dict__.update(strategy="fsdp", offload=True)),
    ("rollout.chunk_size=32", lambda c: setattr(c.rollout, "chunk_size", min(c.rollout.chunk_size or 32, 32))),
    ("model.lora_rank=64", lambda c: setattr(c.model, "lora_rank", 64)),
    ("rollout.max_new_tokens halved", lambda c: setattr(c.rollout, "max_new_tokens", c.rollout.max_new_tokens // 2)),
]  # fmt: skip


def suggest(cfg: Config, config: Any, hw: Hardware, **kw: Any) -> list[tuple[str, Plan]]:
    """Changes that make the run fit, each applied on top of the previous ones, and more GPUs."""
    out = []
    changed = copy.deepcopy(cfg)
    for label, apply in SUGGESTIONS:
        before = copy.deepcopy(changed)
        apply(changed)
        if changed == before:
            continue
        plan = estimate(changed, shape_of(config, changed), hw, **kw)
        out.append((label, plan))
        if plan.fits:
            break
    return out


def render(cfg: Config, shape: Shape, hw: Hardware, plan: Plan) -> str:
    gib = lambda b: f"{b / GIB:7.1f} GiB"  # noqa: E731
    lines = [
        f"model: {shape.total / 1e9:.3f}B parameters ({shape.vision / 1e9:.3f}B vision), "
        f"{shape.trainable / 1e9:.3f}B trained; largest FSDP unit {shape.largest_unit / 1e6:.1f}M, root "
        f"{shape.root_unit / 1e6:.1f}M",
        f"hardware: {hw.nodes} node(s) x {hw.gpus} GPU(s) of {hw.memory_gib:g} GiB, {hw.tflops:g} TFLOP/s; "
        f"strategy {plan.strategy}, rollout {cfg.rollout.backend}",
        "",
        f"{'per GPU':36} {'training':>11} {'rollout':>11}",
    ]
    for name, value in plan.terms.items():
        if value:
            a = gib(value) if name in plan.training else f"{'-':>11}"
            b = gib(value) if name in plan.rollout else f"{'-':>11}"
            lines.append(f"  {name:34} {a} {b}")
    lines.append(f"  {'total':34} {gib(plan.phase(plan.training))} {gib(plan.phase(plan.rollout))}")
    if plan.cpu_per_node:
        lines.append(f"  CPU memory per node (offloaded states): {gib(plan.cpu_per_node).strip()}")
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines += ["", f"peak {gib(plan.peak).strip()} of {gib(plan.usable).strip()} usable per GPU: {verdict}"]
    lines += [f"note: {n}" for n in plan.notes]
    hours = plan.step_s * 1000 * hw.world / 3600  # engine GPUs included
    cost = f", ${hours * hw.price_per_gpu_hour:,.0f}" if hw.price_per_gpu_hour else ""
    lines.append(f"step time ~{plan.step_s:.0f} s at MFU {hw.mfu_train:.0%} (training) / {hw.mfu_rollout:.0%} "
                 f"(generation): {plan.tokens_per_step / plan.step_s:,.0f} tokens/s; 1,000 steps ~"
                 f"{plan.step_s * 1000 / 3600:.1f} h = {hours:,.0f} GPU-hours{cost}")  # fmt: skip
    return "\n".join(lines)
