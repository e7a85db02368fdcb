"""A staged run (`stages:` in the config, docs/recipes.md): each stage is a recipe (grpo, sft, dpo, rft, rm)
run with the run's config plus the stage's overrides, in OUTPUT/stage-K-NAME, starting from the model the
previous stage ended with. An `rm` stage trains a reward model from that model and leaves the policy as it
was: the stages after it score with it (`reward.reward_model.path`; SketchThinker-R1's SketchJudge). Stages
are data: this runner only chains the recipes, each of which keeps its own loop, checkpoints and report.

Resume: a finished stage writes OUTPUT/stage-K-NAME/stage.json (the model it ended with), last. A restarted
run skips the stages that have one and resumes the first that has not from its own checkpoints, at the step
it stopped (`checkpoint.resume: auto`), so a run killed in stage 2 at step 7 continues in stage 2 at step 7.

What a stage changes is any config key: response length and group size (Vision-R1's PTST), the learning-rate
schedule, re-warmed by each stage's own warm-up (continual pre-training's rewarming), the reward terms and
weights (Parallel-R1's schedule by step window), the data and sampler (QwenLong-L1's phases, with
`carry_hard` for its retrospective sampling), the format layout. The optimiser state starts afresh in each
stage, as when each stage is a run of its own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from observe_r1.config import Config, StageConfig, with_overrides
from observe_r1.recipes.dpo import dpo
from observe_r1.recipes.grpo import CARRY_FILE, train
from observe_r1.recipes.rft import rft
from observe_r1.recipes.rm import rm
from observe_r1.recipes.sft import sft
from observe_r1.training import runtime
from observe_r1.training.checkpoint import latest_checkpoint
from observe_r1.training.setup import Inputs

log = logging.getLogger(__name__)

RECORD = "stage.json"


def _grpo(cfg: Config, given: Inputs) -> Path:
    out = train(cfg, given)
    if cfg.model.lora_rank:
        return out / "merged"  # checkpoint.merge_lora is set for every stage of a LoRA run
    last = latest_checkpoint(out)
    assert last is not None, f"GRPO stage in {out} ended without a checkpoint"
    return last


def _sft(cfg: Config, given: Inputs) -> Path:
    out = Path(cfg.logging.output_dir)
    sft(cfg, export=out / "model", given=given)
    return out / "model"


# each recipe returns the folder of the model it ended with
RECIPES: dict[str, Callable[[Config, Inputs], Path]] = {
    "grpo": _grpo,
    "sft": _sft,
    "dpo": dpo,
    "rft": rft,
    "rm": rm,
}


def run_stages(cfg: Config, given: Inputs | None = None) -> Path:
    """Run `cfg.stages` in order (skipping finished ones); returns the output directory."""
    given = given or Inputs()
    out, model, scorer, previous = Path(cfg.logging.output_dir), cfg.model.path, "", None
    for k, stage in enumerate(cfg.stages):
        folder = out / f"stage-{k}-{stage.name or stage.recipe}"
        record = folder / RECORD
        if record.is_file():
            kept = json.loads(record.read_text())
            model, scorer, previous = kept["model"], kept.get("reward_model", ""), folder
            log.info("stage %d (%s) finished earlier: its model is %s", k, folder.name, model)
            continue
        log.info("stage %d/%d: %s, from %s", k + 1, len(cfg.stages), folder.name, model)
        ended = RECIPES[stage.recipe](stage_config(cfg, stage, folder, model, previous, scorer), given)
        if given.stopped:  # a callback stopped it: unfinished, resumed by the next run
            log.info("stage %d stopped by a callback; run again to resume it", k)
            break
        if stage.recipe == "rm":  # the policy stays; the stages after this one score with the reward model
            scorer = str(ended)
        else:
            model = str(ended)
        acc = runtime.make_accelerator()
        if acc.is_main_process:
            tmp = record.with_suffix(".tmp")
            kept = {"stage": k, "recipe": stage.recipe, "model": model, "reward_model": scorer}
            tmp.write_text(json.dumps(kept))
            os.replace(tmp, record)
        acc.wait_for_everyone()
        previous = folder
    return out


def stage_config(
    cfg: Config, stage: StageConfig, folder: Path, model: str, previous: Path | None, scorer: str = ""
) -> Config:
    """The run's config with the stage's overrides, its own output folder, the previous stage's model, the
    reward model an earlier `rm` stage trained (`scorer`), and (with `carry_hard`) the previous stage's
    unmastered items added to its training data."""
    base = dataclasses.replace(cfg, stages=[])
    fixed = [f"model.path={model}", f"logging.output_dir={folder}"]
    fixed += [f"reward.reward_model.path={scorer}"] if scorer else []
    fixed += [f"optim.max_steps={stage.steps}"] if stage.steps else []
    fixed += ["checkpoint.merge_lora=true"] if cfg.model.lora_rank else []
    stage_cfg = with_overrides(base, [*stage.overrides, *fixed])
    carried = previous / CARRY_FILE if previous is not None else None
    if stage.carry_hard and carried is not None and carried.is_file():
        data = dataclasses.replace(stage_cfg.data, train=[*stage_cfg.data.train, str(carried)])
        stage_cfg = dataclasses.replace(stage_cfg, data=data)
    return stage_cfg
