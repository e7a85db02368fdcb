"""The configuration schema: nested dataclasses, overridden by YAML, overridden by `a.b=c` arguments.

Every field has a default that reproduces the Observe-R1 paper (spec section 1) unless said otherwise,
so `Config()` is the paper's recipe. Unknown keys, wrong types and inconsistent values are errors
that name the key (`ConfigError`), never silent fallbacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import operator
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or contradicts another key."""


MAX_TERM_WEIGHT = (
    1000.0  # |reward.terms[].weight| at most this (rewards are at most 1e6: the sum stays finite)
)
MAX_CONFIG_BYTES = 1 << 20  # a config file (or a `base:` file) larger than this is refused


@dataclass
class ModelConfig:
    path: str = (
        ""  # HF directory of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint (or a causal LM), or "tiny"
    )
    tiny_size: Literal["tiny", "small", "medium"] = (
        "tiny"  # with path "tiny": the size of the random model built
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    # the frozen KL reference's weights: auto = the compute precision (bf16 on GPU halves its memory; it is
    # never updated, so it needs no fp32 master copy), fp32 on CPU
    reference_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    attn_implementation: str = "sdpa"  # sdpa, flash_attention_2/3 (GPU) or eager
    # training passes run each micro-batch's sequences end to end without padding (docs/training.md); needs
    # sdpa or flash attention, and for a vision-language model transformers >= 5.20
    packing: bool = True
    freeze_vision: bool = False  # the paper trains the vision tower too
    # run the Python code a model folder ships (`auto_map` in its config.json); never without this (the log
    # says when it is on)
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    # warm start (Ash & Adams 2020): shrink_perturb starts from shrink * the checkpoint + perturb * a fresh random
    # init of the same architecture (the KL reference stays the checkpoint)
    warm_start: Literal["none", "shrink_perturb"] = "none"
    shrink: float = 0.4
    perturb: float = 0.1
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class DataConfig:
    # jsonl / parquet files, globs, folders, `datasets` save_to_disk folders, DIR@split (docs/data.md: native,
    # Observe-R1, EasyR1, verl, TRL rows), or [synth]: the synthetic ladder rendered into the output directory,
    # or [logic]: Knights-and-Knaves puzzles (text only) rendered there
    train: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    # EasyR1's data keys, when the columns are not the layout's own names ("" = detected from the layout)
    prompt_key: str = ""  # the prompt column: text with <image> placeholders, or a chat list
    answer_key: str = ""  # the gold column; dotted for a nested one (reward_model.ground_truth)
    image_key: str = ""  # the images column (a list, or one image)
    image_dir: str = ""  # relative image paths are found here instead of next to the data file
    system_prompt: str = "observe"  # a preset name (observe, think, none) or the literal text
    max_prompt_length: int = 9216  # tokens, image tokens included; longer prompts are rejected, never cut
    min_pixels: int = 3136
    max_pixels: int = 2_560_000
    # videos (docs/data.md "Video"): frames sampled per second, within [min_frames, max_frames] (an even count);
    # each frame at most video_max_pixels, lowered so that all frames fit video_total_pixels (about 4,096 video
    # tokens); longer videos than video_max_seconds are refused; a decode past video_timeout_s skips the prompt
    video_fps: float = 2.0
    video_min_frames: int = 4
    video_max_frames: int = 16
    video_max_pixels: int = 602_112
    video_total_pixels: int = 3_211_264
    video_max_seconds: float = 600.0
    video_timeout_s: float = 60.0
    sampler: Literal["sequential", "shuffled", "online"] = "sequential"  # sequential = NeuraLadder order
    online_new_share: float = 0.5  # online sampler: share of each step's prompts that are new ladder items
    online_ema: float = 0.5  # online sampler: weight of the newest accuracy in an item's pass rate
    max_bad_row_fraction: float = 0.5  # refuse a dataset where more rows than this are bad
    synth_train: int = 512  # with [synth]: rows of synthetic data rendered into the output dir
    synth_test: int = 64


@dataclass
class VLLMConfig:
    """rollout.backend: vllm (docs/rollout.md)."""

    gpu_memory_utilization: float = 0.3  # share of the device memory the engine may take (weights + KV cache)
    kv_cache_gb: float = 0.0  # KV cache size in GiB; 0 = what gpu_memory_utilization leaves (set it on CPU)
    max_model_len: int = (
        0  # 0 = data.max_prompt_length + rollout.max_new_tokens, at most the model's positions
    )
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False  # GPU: free the engine's memory while the trainer updates
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    enforce_eager: bool = True  # no CUDA graphs / compilation: a faster start, a slower decode


@dataclass
class MultiTurnConfig:
    """Tool-calling rollouts (docs/tools.md): generate until a tool call, run it, append its result as an
    observation (masked from the loss), continue."""

    enabled: bool = False
    # chat: the chat template's tool turns, calls as <tool_call>{"name": ..., "arguments": ...}</tool_call>;
    # code: <code>python</code> -> <output>...</output> inside the answer, for models without a tool template
    layout: Literal["chat", "code"] = "chat"
    max_turns: int = 4  # model turns per response (tool calls + 1)
    max_total_tokens: int = 0  # model + observation tokens per response; 0 = rollout.max_new_tokens
    max_observation_tokens: int = 256  # one observation's tokens at most (cut, with a note to the model)
    # START's hint-infer: inserted when the model closes its thinking (`hint_marker`) without having called a
    # tool, at most `max_hints` times per response; masked like observations
    hints: list[str] = field(default_factory=list)
    hint_marker: str = "</think>"
    max_hints: int = 1


@dataclass
class ToolsConfig:
    """The tools multi-turn rollouts may call (docs/tools.md)."""

    names: list[str] = field(default_factory=list)  # python, crop, sandbox_fusion, or file.py:fn / module:fn
    sandbox: Literal["auto", "bwrap", "process"] = "auto"  # auto: bubblewrap when it works here, else process
    python: str = ""  # the interpreter that runs the code; "" = this one (or /usr/bin/python3, docs/tools.md)
    cpu_s: float = 5.0
    wall_s: float = 10.0
    memory_mb: int = 1024
    file_mb: int = 16
    disk_mb: int = 64
    max_processes: int = 16
    max_output_bytes: int = 65536  # per stream, kept from the sandbox (the observation is cut further)
    max_output_chars: int = 2000  # of one observation's text
    workers: int = 4  # tool calls run at once
    sandbox_fusion_url: str = ""  # e.g. http://localhost:8080 for tools.names: [sandbox_fusion]
    crop_max_pixels: int = 1 << 20


@dataclass
class RolloutConfig:
    # what generates the rollouts: hf = HF `generate` on the policy itself; vllm = a colocated vLLM engine,
    # weights synced every step (docs/rollout.md)
    backend: Literal["hf", "vllm"] = "hf"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    n: int = 8  # responses per prompt (the group)
    prompts_per_step: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 8192
    chunk_size: int = 0  # sequences per generate call (bounds rollout memory); 0 = all at once
    multi_turn: MultiTurnConfig = field(default_factory=MultiTurnConfig)
    # sync: generate when the trainer asks; async: an engine process generates and scores ahead while the
    # trainer trains, at most `max_staleness` policy versions behind (docs/rollout.md "Asynchronous rollouts")
    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = 1  # async: versions a trained response may lag the policy; 0 = the synchronous loop
    # async: decoupled = the PPO ratio against the trainer's recomputed log-probs (the proximal policy) with
    # the behaviour policy's tokens weighted by min(pi_proximal / pi_behaviour, algorithm.tis_cap or 2)
    # (AReaL); behaviour = the ratio against the engine's log-probs directly (no recomputation)
    correction: Literal["decoupled", "behaviour"] = "decoupled"
    engine_threads: int = 0  # async: torch threads of the engine process; 0 = torch's default
    # async on GPUs: the engine of the trainer process on GPU g runs on GPU g + this (0 = the same GPU; 4 with
    # 4 trainer processes on an 8-GPU node: 4 training + 4 engine GPUs)
    engine_gpu_offset: int = 0
    engine_timeout_s: float = 1800.0  # async: a step waiting this long for the engine ends the run
    # async: what a request in progress does when new weights come in. finish: its responses end with the
    # weights they began with; partial: they go on with the new ones (each token's version recorded); restart:
    # it begins again with them. partial and restart look for new weights every `segment_tokens` tokens
    # (rollout/partial.py; HF generate)
    in_flight: Literal["finish", "partial", "restart"] = "finish"
    segment_tokens: int = 32


@dataclass
class RewardTerm:
    name: str  # accuracy, observe_format, think_format, ... or "path/file.py:fn" / "package.module:fn"
    weight: float = 1.0
    # how the function is called (docs/rewards.md): native (ours), trl (TRL's reward_funcs), easyr1
    # (EasyR1's compute_score over reward_inputs), verl (verl's compute_score(data_source, solution_str, ...))
    signature: Literal["native", "trl", "easyr1", "verl"] = "native"
    # for functions that return dicts: the key that is the score, the other keys only logged; "" = the
    # signature's own (easyr1: overall, verl: score; native: the sum of the values)
    score_key: str = ""

    @property
    def key(self) -> str:
        """The term's name in metrics, `correct_term` and `gate`: a reference's function name, else the name."""
        return self.name.rsplit(":", 1)[-1]


@dataclass
class RewardModelConfig:
    """The `reward_model` reward term (docs/rewards.md): a trained reward model scores every response of a
    step in the trainer process, in batches, with the prompt's images when it is a VLM."""

    path: str = ""  # its folder: OUTPUT/model of `observe-r1 rm`, or any checkpoint with a score head
    batch_size: int = 16  # sequences per forward pass
    # standardized: z-scores over the step's responses; sigmoid: sigmoid(raw), in (0, 1), so that under
    # `reward.gate` a right answer never scores below a wrong one (a z-score is negative for half the responses)
    scores: Literal["raw", "standardized", "sigmoid"] = "raw"


JUDGE_TEMPLATE = """Grade the response to a question. Reply with one line: Score: N, where N is 0 (wrong) to 10 (right).
Question: {{ prompt }}
Reference answer: {{ answer }}
Response: {{ response }}"""


@dataclass
class JudgeConfig:
    """The `judge` reward term (LLM-as-judge, docs/rewards.md): a model reads a Jinja prompt about each response
    and its score is parsed from the answer."""

    model: str = ""  # a local model's folder: it judges in the trainer process (HF generate, greedy)
    # or an OpenAI-compatible endpoint (`observe-r1 serve`, `vllm serve`, a provider), e.g. http://127.0.0.1:8000/v1
    url: str = ""
    served_model: str = ""  # the endpoint's name for its model (the request's `model` field)
    api_key_env: str = ""  # the environment variable holding the endpoint's API key (never logged); "" = none
    # over `prompt` (the question's text), `response`, `answer` (the gold), `messages` and every dataset column
    template: str = JUDGE_TEMPLATE
    score_regex: str = r"(?i)score\W*(-?\d+(?:\.\d+)?)"  # the score is its first group, at its last match
    score_field: str = ""  # or this field of the JSON object in the answer (then score_regex is unused)
    max_score: float = (
        10.0  # a parsed score is divided by this; one outside [0, max_score] counts as unparsed
    )
    failure_score: float = (
        0.0  # a response whose judgement failed (unparsed, timed out, HTTP error) scores this
    )
    max_new_tokens: int = 64
    batch_size: int = 8  # a local judge's sequences per generate call; an endpoint's requests in flight
    timeout_s: float = 60.0  # per request to an endpoint
    max_retries: int = 3  # per request, on HTTP 429 and 5xx and dropped connections, with exponential backoff


@dataclass
class RewardConfig:
    terms: list[RewardTerm] = field(
        default_factory=lambda: [RewardTerm("accuracy", 1.0), RewardTerm("observe_format", 0.5)]
    )
    correct_term: str = "accuracy"  # the term that says whether a response is correct (bonus and f(d))
    correct_threshold: float = 1.0  # a response is correct when its correct_term value is >= this
    bonus_coef: float = 0.2  # Observe-R1 bonus for the shortest correct response of a group; 0 = off
    bonus_min_length: int = 100  # tokens; the shortest correct response must be longer than this
    answer_fallback: bool = False  # without <answer> tags, grade one final answer (unsafe: docs/rewards.md)
    # your format layouts by name, in the layout grammar (docs/rewards.md); each is checked by a term
    # `<name>_format`, e.g. {plan: "think plan answer"} -> plan_format
    layouts: dict[str, str] = field(default_factory=dict)
    # a term that gates the others: the total is the weighted sum of the other terms where this term is >= 1,
    # else 0 (Plantain's format gate; Vision-R1's "1 only if format and answer are right"); its weight is unused
    gate: str = ""
    # sum: advantages of the weighted sum of the terms; per_objective: each term normalised in its group on its
    # own, then weighted; pareto: responses ranked by Pareto non-domination over the terms, ties broken by
    # their weighted z-scores (multi-objective rewards, Factum; docs/rewards.md)
    combine: Literal["sum", "per_objective", "pareto"] = "sum"
    timeout_s: float = 5.0  # seconds each response may take in each term (math-verify's grading included)
    workers: int = 2  # processes that score rewards (in parallel, with the time bound); 0 = in this process
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class AlgorithmConfig:
    estimator: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    difficulty_weighting: bool = True  # Observe-R1 f(d) = 4 * sigma * d * (1 - d)
    sigma: float = 1.8
    # ppo: token ratios, clipped; gspo: one length-normalised ratio per sequence (its paper clips at
    # clip_low=3e-4, clip_high=4e-4, with loss_agg: seq_mean_token_mean); cispo: a clipped, stop-gradient
    # importance weight on every token's log-prob (docs/grpo.md)
    policy_loss: Literal["ppo", "gspo", "cispo"] = "ppo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0  # 0 = off; else the dual-clip constant c > 1
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    kl_mode: Literal["off", "loss", "reward"] = "reward"  # the paper: per-token penalty inside the reward
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_coef: float = 0.01
    entropy_coef: float = 0.0
    mask_truncated: bool = False
    # truncated importance sampling for the engine/trainer mismatch (rollout.backend: vllm): each token's loss
    # is weighted by min(pi_trainer / pi_engine, tis_cap) of the rollout weights; 0 = off (verl and TRL use 2)
    tis_cap: float = 0.0
    # masked importance sampling (MIS / IcePop): tokens whose engine-vs-trainer ratio pi_trainer / pi_engine lies
    # outside [low, high] get no loss (IcePop: [0.5, 5] with tis_cap: 5); [] = off; needs the engine's log-probs
    mismatch_band: list[float] = field(default_factory=list)
    # DAPO's overlong reward shaping: over the last `overlong_buffer` tokens of rollout.max_new_tokens the reward
    # falls linearly by up to overlong_penalty (0 = off)
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    dynamic_sampling: bool = False  # DAPO: drop zero-variance groups and refill
    # WSRL: rollout steps of the initial policy before the first update, scored, not trained on: the prompt
    # sampler hears their accuracy (with data.sampler: online, its pass rates start measured)
    warmup_rollout_steps: int = 0
    dynamic_sampling_max_tries: int = 3


@dataclass
class OptimConfig:
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = 0.03
    min_lr: float = 1e-7
    mini_batch_size: int = 64  # responses per optimiser step
    micro_batch_size: int = 2  # responses per forward/backward
    ppo_epochs: int = 1
    epochs: int = 1
    max_steps: int = 0  # rollout steps; 0 = as many as the data and epochs give
    max_nonfinite_steps: int = 5  # consecutive skipped (NaN/inf) optimiser steps before the run stops


@dataclass
class LoggingConfig:
    output_dir: str = "runs/observe-r1"
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "observe-r1"
    wandb_entity: str = ""  # "" = your default entity
    wandb_run_name: str = ""  # "" = the output directory's name
    wandb_tags: list[str] = field(default_factory=list)
    dump_rollouts_every: int = 10
    # every k rollout steps, sampled completions with their rewards: TensorBoard text and a wandb table; 0 = off
    log_completions_every: int = 10
    log_completions: int = 8  # how many completions each time (spread over the step's groups)
    eval_every: int = 0  # rollout steps; 0 = only at the end
    # at each evaluation, the Visual Attention Score (eval/vision/attention_score, per layer too: the share of
    # attention the responses pay to the image; AVAR) on the first this-many evaluation samples; 0 = off
    vas_probe: int = 0


@dataclass
class CheckpointConfig:
    every: int = 50  # rollout steps
    keep_last: int = 2
    resume: str = "auto"  # auto (newest complete checkpoint in output_dir), none, or a checkpoint path
    merge_lora: bool = False  # with LoRA: also write the merged full model to OUTPUT/merged at the end
    # keep the checkpoint of the best periodic evaluation in OUTPUT/checkpoints/best: the name of a metric the
    # evaluation logs (eval/accuracy, eval/format_rate, ...); "" = off. Needs logging.eval_every and data.test.
    best_metric: str = ""
    best_mode: Literal["max", "min"] = "max"  # whether higher or lower values of best_metric are better
    # start afresh in an output directory that holds a previous run (its checkpoints, metrics and rollouts
    # are deleted first); without it such a directory is refused unless the run resumes from it
    overwrite: bool = False
    # resume even though the config differs from the checkpoint's (the new values apply and are logged);
    # without it the differences are listed and the resume refused
    allow_config_change: bool = False


@dataclass
class LadderConfig:
    k: int = 8  # sampled responses per item; difficulty = 1 - correct / k
    easy_model: str = ""  # a checkpoint for the direct-answer easy filter; "" = no easy filter
    min_complexity: float = (
        0.0  # difficulty-0 items with a mean response shorter than this (tokens) are dropped
    )
    own_share: float = 0.6  # share of each stage drawn from its own difficulty level
    proportions: list[float] = field(default_factory=list)  # per difficulty level, easy first; [] = keep all
    batch_size: int = 16  # prompts per generate call
    # difficulty-1 items (never solved in k) make the ladder's hardest level instead of OUT.review.jsonl: for
    # golds right by construction (the toy tasks), where a review would pass every one of them
    keep_unsolved: bool = False


@dataclass
class ParallelConfig:
    # ddp: every process holds the whole model, its gradients and optimiser state (accelerate's DDP);
    # fsdp: PyTorch's FSDP2 shards them over the processes, one unit per decoder layer and vision block
    # (docs/training.md; `observe-r1 plan` says which fits)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    offload: bool = False  # fsdp: parameters, gradients and optimiser state in CPU memory between uses


SKETCH_TEMPLATE = """Rewrite the reasoning inside <think> as a short sketch: keep every step that leads to the answer, drop \
restatements, hedges and re-checks. Keep the other tags and the answer exactly as they are. Reply with the rewritten response only.
{{ response }}"""


@dataclass
class SFTConfig:
    response_column: str = "solution"  # the dataset column holding the reference response
    thought_dropout: float = 0.0  # TON: the share of responses whose thought is emptied (stable per sample)
    difficulty_cue: bool = False  # Think-How-to-Think: <difficulty>easy|medium|hard</difficulty> first
    # Metis-SPECS (`observe-r1 dpo` / a dpo stage): DPO's beta and the weight of the SFT loss on the chosen
    dpo_beta: float = 0.1
    dpo_sft_weight: float = 1.0
    # SketchThinker-R1: the reference responses' thoughts made sketches before training: by rules (self-talk,
    # restatements and repeats dropped), or rewritten by the judge model (`reward.judge`, with sketch_template)
    sketch: Literal["off", "rules", "judge"] = "off"
    sketch_template: str = SKETCH_TEMPLATE  # Jinja over `response` (and the row's columns), for sketch: judge
    # `observe-r1 rm`: the weight of the mean squared sum of each pair's scores, which keeps them centred on 0
    # (TRL's center_rewards_coefficient; Eisenstein et al. 2023 suggest 0.01); 0 = off
    rm_center_coef: float = 0.0


@dataclass
class RFTConfig:
    """Rejection-sampling fine-tuning (`observe-r1 rft`, docs/recipes.md)."""

    rounds: int = 2  # sample -> keep the correct -> fine-tune, this many times
    keep: Literal["shortest", "all"] = "shortest"  # per prompt: the shortest correct response, or every one
    # START's hint-RFT: keep only correct responses that called a tool and got a result (multi-turn rollouts)
    require_tool: bool = False


@dataclass
class StageConfig:
    """One stage of a staged run (docs/recipes.md): a recipe, its length, and what changes for it."""

    name: str = ""  # names the stage's folder, OUTPUT/stage-K-NAME ("" = the recipe)
    recipe: Literal["grpo", "sft", "dpo", "rft", "rm"] = "grpo"
    steps: int = 0  # this stage's optim.max_steps (rollout steps for grpo); 0 = its own count
    overrides: list[str] = field(default_factory=list)  # `a.b=c` on top of the run's config, for this stage
    # QwenLong-L1's retrospective sampling: the previous stage's unmastered items (online sampler pass rate below
    # 1) join this stage's data, with difficulty 1 - pass rate
    carry_hard: bool = False


@dataclass
class Config:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    # a staged run: each stage starts from the model the previous one ended with ([] = one GRPO run)
    stages: list[StageConfig] = field(default_factory=list)

    @staticmethod
    def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
        """Defaults <- YAML file <- `a.b=c` overrides, validated (`load_config`)."""
        return load_config(path, overrides)

    def validate(self) -> Config:
        """Every value in its range, then the cross-field rules. Raises ConfigError naming the key; returns self."""
        for key, test, why in RANGES:
            value = operator.attrgetter(key)(self)
            if not all(test(v) for v in (value if isinstance(value, tuple | list) else [value])):
                raise ConfigError(f"{key}: {why}, got {value!r}")
        r, o, c = self.rollout, self.optim, self.checkpoint
        checks = [
            (
                0 < self.data.min_pixels <= self.data.max_pixels,
                "data.min_pixels",
                "must be in (0, max_pixels]",
            ),
            (
                self.data.video_fps > 0 and 2 <= self.data.video_min_frames <= self.data.video_max_frames,
                "data.video_fps",
                "needs video_fps > 0 and 2 <= video_min_frames <= video_max_frames",
            ),
            (
                self.data.min_pixels <= self.data.video_max_pixels <= self.data.video_total_pixels,
                "data.video_max_pixels",
                "must be in [min_pixels, video_total_pixels]",
            ),
            (len(self.reward.terms) >= 1, "reward.terms", "needs at least one term"),
            (
                all(abs(t.weight) <= MAX_TERM_WEIGHT for t in self.reward.terms),
                "reward.terms",
                f"every weight must be within +-{MAX_TERM_WEIGHT:g}",
            ),
            (
                self.reward.correct_term in [t.key for t in self.reward.terms],
                "reward.correct_term",
                f"{self.reward.correct_term!r} must name one of reward.terms",
            ),
            (
                not self.reward.gate or self.reward.gate in [t.key for t in self.reward.terms],
                "reward.gate",
                f"{self.reward.gate!r} must name one of reward.terms",
            ),
            (
                bool(self.reward.reward_model.path)
                or "reward_model" not in [t.key for t in self.reward.terms],
                "reward.reward_model.path",
                "the reward_model term needs the folder of a reward model (`observe-r1 rm` writes OUTPUT/model)",
            ),
            (
                bool(self.reward.judge.model) != bool(self.reward.judge.url)
                or "judge" not in [t.key for t in self.reward.terms],
                "reward.judge",
                "the judge term needs one of reward.judge.model (a local folder) or reward.judge.url (an endpoint)",
            ),
            (
                self.sft.sketch != "judge" or bool(self.reward.judge.model) != bool(self.reward.judge.url),
                "sft.sketch",
                "judge rewrites with the judge model: set one of reward.judge.model or reward.judge.url",
            ),
            (
                not self.reward.judge.url or self.reward.judge.url.startswith(("http://", "https://")),
                "reward.judge.url",
                "must be an http:// or https:// URL (an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1)",
            ),
            (
                not (self.reward.gate and self.reward.combine != "sum"),
                "reward.combine",
                f"{self.reward.combine} keeps the terms apart, a gate multiplies them: choose one",
            ),
            (o.min_lr <= o.lr, "optim.min_lr", "must be in [0, optim.lr]"),
            (
                not r.multi_turn.enabled or bool(self.tools.names),
                "tools.names",
                "rollout.multi_turn needs at least one tool (python, crop, sandbox_fusion or file.py:fn)",
            ),
            (
                not self.rft.require_tool or r.multi_turn.enabled,
                "rft.require_tool",
                "keeps responses that called a tool: it needs rollout.multi_turn.enabled",
            ),
            (
                not (r.multi_turn.enabled and r.multi_turn.layout == "code")
                or any(n in ("python", "sandbox_fusion") for n in self.tools.names),
                "rollout.multi_turn.layout",
                "code runs <code> blocks: tools.names needs python or sandbox_fusion",
            ),
            (
                r.in_flight == "finish"
                or r.mode == "async"
                and r.backend == "hf"
                and not r.multi_turn.enabled,
                "rollout.in_flight",
                "partial and restart are for rollout.mode=async with the hf backend, without multi_turn",
            ),
            (
                not (r.mode == "async" and r.max_staleness and self.algorithm.warmup_rollout_steps),
                "algorithm.warmup_rollout_steps",
                "the warm-up runs on the trainer's own rollouts: not with rollout.mode=async",
            ),
            (
                not self.algorithm.mismatch_band
                or len(self.algorithm.mismatch_band) == 2
                and self.algorithm.mismatch_band[0] < 1 < self.algorithm.mismatch_band[1],
                "algorithm.mismatch_band",
                "must be [] (off) or [low, high] with low < 1 < high",
            ),
            (
                self.algorithm.overlong_buffer < r.max_new_tokens,
                "algorithm.overlong_buffer",
                f"must be below rollout.max_new_tokens ({r.max_new_tokens})",
            ),
            (
                o.mini_batch_size % o.micro_batch_size == 0,
                "optim.mini_batch_size",
                f"must be a multiple of optim.micro_batch_size ({o.micro_batch_size})",
            ),
            (
                (r.prompts_per_step * r.n) % o.mini_batch_size == 0,
                "optim.mini_batch_size",
                "must divide rollout.prompts_per_step * rollout.n (responses per rollout step)",
            ),
            (
                not (c.overwrite and c.resume != "none"),
                "checkpoint.overwrite",
                "needs checkpoint.resume=none",
            ),
            (
                not (self.parallel.strategy == "fsdp" and self.model.lora_rank and r.backend == "vllm"),
                "parallel.strategy",
                "fsdp with LoRA and rollout.backend=vllm is not supported yet (the engine is served merged "
                "weights, which a sharded LoRA model cannot merge in place): use ddp, or rollout.backend=hf",
            ),
            (
                not self.parallel.offload or self.parallel.strategy == "fsdp",
                "parallel.offload",
                "needs parallel.strategy=fsdp",
            ),
            (
                not c.best_metric or self.logging.eval_every >= 1,
                "checkpoint.best_metric",
                "needs logging.eval_every >= 1 (the evaluations it chooses among)",
            ),
        ]
        for passed, key, why in checks:
            if not passed:
                raise ConfigError(f"{key}: {why}")
        for k, stage in enumerate(self.stages):  # each stage's config is checked now, not when it starts
            if stage.steps < 0:
                raise ConfigError(f"stages[{k}].steps: must be >= 0, got {stage.steps}")
            # after an rm stage, the run sets reward.reward_model.path to its model
            earlier_rm = any(s.recipe == "rm" for s in self.stages[:k])
            scored = ["reward.reward_model.path=(an earlier rm stage)"] if earlier_rm else []
            try:
                with_overrides(dataclasses.replace(self, stages=[]), [*stage.overrides, *scored])
            except ConfigError as e:
                raise ConfigError(f"stages[{k}] ({stage.name or stage.recipe}): {e}") from None
        return self


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _in(low: float, high: float, high_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: low <= v < high if high_open else low <= v <= high


# (key, test, why): checked one value at a time (each item of a list or tuple); floats are finite already.
RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("data.max_prompt_length", _at_least(1), "must be >= 1"),
    ("data.max_bad_row_fraction", _in(0, 1), "must be in [0, 1]"),
    ("data.online_new_share", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("data.online_ema", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("data.synth_train", _at_least(1), "must be >= 1"),
    ("data.synth_test", _at_least(0), "must be >= 0"),
    ("rollout.n", _at_least(2), "a group needs at least 2 responses"),
    ("rollout.prompts_per_step", _at_least(1), "must be >= 1"),
    ("rollout.temperature", lambda v: v > 0, "must be > 0"),
    ("rollout.top_p", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("rollout.top_k", _at_least(0), "must be >= 0 (0 = off)"),
    ("rollout.max_new_tokens", _at_least(1), "must be >= 1"),
    ("rollout.chunk_size", _at_least(0), "must be >= 0 (0 = all at once)"),
    ("rollout.max_staleness", _in(0, 64), "must be in [0, 64]"),
    ("rollout.engine_threads", _in(0, 1024), "must be in [0, 1024] (0 = torch's default)"),
    ("rollout.segment_tokens", _at_least(1), "must be >= 1"),
    ("rollout.engine_gpu_offset", _in(0, 1024), "must be in [0, 1024]"),
    ("rollout.engine_timeout_s", _in(1, 86400), "must be in [1, 86400] seconds"),
    ("rollout.multi_turn.max_turns", _in(1, 64), "must be in [1, 64]"),
    ("rollout.multi_turn.max_total_tokens", _at_least(0), "must be >= 0 (0 = rollout.max_new_tokens)"),
    ("rollout.multi_turn.max_observation_tokens", _at_least(1), "must be >= 1"),
    ("rollout.multi_turn.max_hints", _in(0, 16), "must be in [0, 16]"),
    ("tools.cpu_s", _in(0.1, 3600), "must be in [0.1, 3600] seconds"),
    ("tools.wall_s", _in(0.1, 3600), "must be in [0.1, 3600] seconds"),
    ("tools.memory_mb", _in(64, 1 << 20), "must be in [64, 2^20] MB"),
    ("tools.file_mb", _in(1, 1 << 20), "must be in [1, 2^20] MB"),
    ("tools.disk_mb", _in(1, 1 << 20), "must be in [1, 2^20] MB"),
    ("tools.max_processes", _in(1, 4096), "must be in [1, 4096]"),
    ("tools.max_output_bytes", _in(1, 1 << 26), "must be in [1, 2^26]"),
    ("tools.max_output_chars", _in(1, 1 << 24), "must be in [1, 2^24]"),
    ("tools.workers", _in(1, 256), "must be in [1, 256]"),
    ("reward.bonus_coef", _at_least(0), "must be >= 0"),
    ("reward.reward_model.batch_size", _in(1, 1 << 16), "must be in [1, 65536]"),
    ("reward.judge.batch_size", _in(1, 1024), "must be in [1, 1024]"),
    ("reward.judge.timeout_s", _in(0.01, 3600), "must be in [0.01, 3600] seconds"),
    ("reward.judge.max_retries", _in(0, 20), "must be in [0, 20]"),
    ("reward.judge.max_new_tokens", _in(1, 1 << 16), "must be in [1, 65536]"),
    ("reward.judge.max_score", lambda v: v > 0, "must be > 0"),
    ("sft.rm_center_coef", _at_least(0), "must be >= 0"),
    ("reward.bonus_min_length", _at_least(0), "must be >= 0"),
    ("seed", _in(0, 2**32 - 1), "must be in [0, 2^32 - 1]"),
    ("reward.timeout_s", _in(0.01, 3600), "must be in [0.01, 3600] seconds"),
    (
        "reward.workers",
        _in(0, 256),
        "must be in [0, 256] (0 = in the training process, without a time bound)",
    ),
    ("algorithm.sigma", _at_least(0), "must be >= 0"),
    ("algorithm.clip_low", _in(0, 1, high_open=True), "must be in [0, 1)"),
    ("algorithm.clip_high", _at_least(0), "must be >= 0"),
    ("algorithm.dual_clip", lambda v: v == 0 or v > 1, "must be 0 (off) or > 1"),
    ("algorithm.kl_coef", _at_least(0), "must be >= 0"),
    ("algorithm.dynamic_sampling_max_tries", _at_least(1), "must be >= 1"),
    ("algorithm.tis_cap", lambda v: v == 0 or v >= 1, "must be 0 (off) or >= 1"),
    ("algorithm.mismatch_band", lambda v: v > 0, "must be positive ratios"),
    ("algorithm.overlong_buffer", _at_least(0), "must be >= 0 (0 = off)"),
    ("algorithm.overlong_penalty", _at_least(0), "must be >= 0"),
    ("rollout.vllm.gpu_memory_utilization", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("rollout.vllm.kv_cache_gb", _at_least(0), "must be >= 0"),
    ("rollout.vllm.max_model_len", _at_least(0), "must be >= 0"),
    ("rollout.vllm.tensor_parallel_size", _at_least(1), "must be >= 1"),
    ("optim.lr", lambda v: v > 0, "must be > 0"),
    ("optim.min_lr", _at_least(0), "must be >= 0"),
    ("optim.betas", _in(0, 1, high_open=True), "must be in [0, 1)"),
    ("optim.weight_decay", _at_least(0), "must be >= 0"),
    (
        "optim.grad_clip",
        _at_least(0),
        "must be >= 0 (0 = no clipping); a negative norm reverses every update",
    ),
    ("optim.warmup_ratio", _in(0, 1, high_open=True), "must be in [0, 1)"),
    ("optim.mini_batch_size", _at_least(1), "must be >= 1"),
    ("optim.micro_batch_size", _at_least(1), "must be >= 1"),
    ("optim.ppo_epochs", _at_least(1), "must be >= 1"),
    ("optim.epochs", _at_least(1), "must be >= 1"),
    ("optim.max_steps", _at_least(0), "must be >= 0 (0 = as many as the data and epochs give)"),
    ("optim.max_nonfinite_steps", _at_least(1), "must be >= 1"),
    ("model.lora_rank", _at_least(0), "must be >= 0"),
    ("model.lora_alpha", lambda v: v > 0, "must be > 0"),
    ("model.lora_dropout", _in(0, 1, high_open=True), "must be in [0, 1)"),
    ("logging.eval_every", _at_least(0), "must be >= 0 (0 = only at the end)"),
    ("logging.vas_probe", _at_least(0), "must be >= 0 (0 = off)"),
    ("logging.dump_rollouts_every", _at_least(0), "must be >= 0 (0 = never)"),
    ("logging.log_completions_every", _at_least(0), "must be >= 0 (0 = never)"),
    ("logging.log_completions", _at_least(1), "must be >= 1"),
    ("checkpoint.every", _at_least(1), "must be >= 1"),
    ("checkpoint.keep_last", _at_least(1), "must be >= 1"),
    ("ladder.k", _at_least(1), "must be >= 1"),
    ("ladder.own_share", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("ladder.proportions", _at_least(0), "must be >= 0"),
    ("ladder.min_complexity", _at_least(0), "must be >= 0"),
    ("ladder.batch_size", _at_least(1), "must be >= 1"),
    ("sft.thought_dropout", _in(0, 1), "must be in [0, 1]"),
    ("rft.rounds", _at_least(1), "must be >= 1"),
    ("algorithm.warmup_rollout_steps", _at_least(0), "must be >= 0"),
    ("sft.dpo_beta", lambda v: v > 0, "must be > 0"),
    ("sft.dpo_sft_weight", _at_least(0), "must be >= 0"),
]


def from_dict(cls: Any, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {_join(prefix, unknown[0])} (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, _join(prefix, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without default is missing
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple) `value` against the annotation `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads off/no/on/yes as booleans
            spelled = [
                a
                for a in args
                if str(a).lower() in (("on", "yes", "true") if value else ("off", "no", "false"))
            ]
            value = spelled[0] if spelled else value
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null")
        return None
    if tp is float and not isinstance(value, bool) and isinstance(value, int | float | str):
        # YAML 1.1 reads 1e-2 as a string; nan / inf are never a sensible setting
        with contextlib.suppress(ValueError):
            value = float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool:
            raise ConfigError(f"{key}: expected {tp.__name__}, got a boolean")
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a schema bug


def parse_override(arg: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-5` -> (["optim", "lr"], 1e-5). The value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in arg:
        raise ConfigError(f"override {arg!r} must look like key.sub=value")
    key, raw = arg.split("=", 1)
    value = parse_yaml(raw, f"override {arg!r}") if raw else ""
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file <- `a.b=c` overrides, then validate()."""
    data = read_yaml(Path(path)) if path is not None else {}
    return from_dict(Config, apply_overrides(data, overrides)).validate()


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict; `base: OTHER.yaml` (relative to the file) is read first and this file's keys
    are merged over it (mappings key by key, everything else replaced)."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `base:` files include each other")
    loaded = parse_yaml(read_config_file(path), str(path))
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    data = loaded or {}
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(read_yaml(path.parent / base, (*seen, path.resolve())), data)


def read_config_file(path: Path) -> str:
    """The text of a config file: a regular file (not a device or a pipe, which may never end) of at most
    MAX_CONFIG_BYTES, in UTF-8."""
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such config file" if not path.exists() else f"{path}: not a regular file"
        )
    with path.open("rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a config file")
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last one silently: two
    `optim:` sections would drop the first)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if not isinstance(key, typing.Hashable):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text parsed with the safe loader (no Python objects) and unique keys; an error names `where` and
    the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}{line}: {problem}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The nested dict with each `a.b=c` set in it (in place; returned)."""
    for arg in overrides:
        keys, value = parse_override(arg)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {arg!r}: {k} is not a section")
        node[keys[-1]] = value
    return data


def with_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of `cfg` with `a.b=c` overrides applied, validated."""
    return from_dict(Config, apply_overrides(plain_dict(cfg), overrides)).validate()


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def plain_dict(cfg: Config) -> dict[str, Any]:
    """The config as YAML's plain types (tuples as lists), which `from_dict` reads back."""
    d = to_dict(cfg)
    d["optim"]["betas"] = list(d["optim"]["betas"])
    return d


def config_yaml(cfg: Config) -> str:
    return yaml.safe_dump(plain_dict(cfg), sort_keys=False)


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))
