import re
from pathlib import Path

import pytest

from observe_r1.config import Config, ConfigError, RewardTerm, dump_config, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("**/*.yaml"))


def test_defaults_are_the_paper_and_valid():
    cfg = Config().validate()
    assert cfg.rollout.n == 8 and cfg.rollout.prompts_per_step == 128
    assert cfg.optim.lr == 1e-6 and cfg.optim.betas == (0.9, 0.95) and cfg.optim.mini_batch_size == 64
    assert cfg.algorithm.sigma == 1.8 and cfg.algorithm.kl_coef == 0.01 and cfg.algorithm.kl_mode == "reward"
    assert cfg.reward.terms == [RewardTerm("accuracy", 1.0), RewardTerm("observe_format", 0.5)]
    assert (cfg.reward.bonus_coef, cfg.reward.bonus_min_length) == (0.2, 100)
    assert (cfg.data.min_pixels, cfg.data.max_pixels, cfg.data.max_prompt_length) == (3136, 2_560_000, 9216)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 2


def test_yaml_then_command_line_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1.0e-5\nrollout:\n  n: 4\n")
    cfg = load_config(f, ["rollout.n=16", "optim.betas=[0.8, 0.9]", "data.train=[a.jsonl, b.jsonl]"])
    assert cfg.optim.lr == 1e-5 and cfg.rollout.n == 16
    assert cfg.optim.betas == (0.8, 0.9) and cfg.data.train == ["a.jsonl", "b.jsonl"]


def test_yaml_off_is_the_string_off(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algorithm:\n  kl_mode: off\n")
    assert load_config(f).algorithm.kl_mode == "off"
    assert load_config(None, ["algorithm.kl_mode=off"]).algorithm.kl_mode == "off"


def test_reward_terms_from_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("reward:\n  terms:\n    - {name: accuracy}\n    - {name: my.py:fn, weight: 2}\n")
    terms = load_config(f).reward.terms
    assert terms == [RewardTerm("accuracy", 1.0), RewardTerm("my.py:fn", 2.0)]


def test_yaml_float_written_without_dot_is_accepted(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1e-5\n")  # YAML 1.1 reads this as a string
    assert load_config(f).optim.lr == 1e-5


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown key optim.lrr"),
        ("nonsense.x=1", "unknown key nonsense"),
        ("rollout.n=eight", "rollout.n: expected int"),
        ("rollout.n=true", "rollout.n: expected int, got a boolean"),
        ("algorithm.estimator=ppo", "algorithm.estimator: 'ppo' is not one of"),
        ("optim.betas=[0.9]", "optim.betas: expected a list of 2"),
        ("rollout.n=1", "rollout.n: a group needs at least 2"),
        ("optim.micro_batch_size=3", "optim.mini_batch_size: must be a multiple"),
        ("optim.min_lr=1", "optim.min_lr"),
        ("data.min_pixels=0", "data.min_pixels"),
        ("reward.terms=[]", "reward.terms"),
        ("reward.terms=[{weight: 1}]", "reward.terms[0]"),
        ("model", "must look like key.sub=value"),
        ("parallel.strategy=zero3", "parallel.strategy: 'zero3' is not one of"),
        ("parallel.offload=true", "parallel.offload: needs parallel.strategy=fsdp"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_fsdp_with_lora_and_vllm_is_refused_with_the_way_out():
    load_config(None, ["parallel.strategy=fsdp", "model.lora_rank=8"])  # LoRA with FSDP: fine
    with pytest.raises(
        ConfigError, match="parallel.strategy: fsdp with LoRA and rollout.backend=vllm .* use ddp"
    ):
        load_config(None, ["parallel.strategy=fsdp", "model.lora_rank=8", "rollout.backend=vllm"])


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-6", "seed=7"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


BAD_VALUES = [
    ("optim.grad_clip=-1", "optim.grad_clip"),  # was accepted: gradient ascent
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("optim.betas=[0.9, 1.0]", "optim.betas"),
    ("optim.betas=[-0.1, 0.9]", "optim.betas"),
    ("algorithm.clip_low=-0.1", "algorithm.clip_low"),
    ("algorithm.clip_low=1.0", "algorithm.clip_low"),
    ("algorithm.clip_high=-0.2", "algorithm.clip_high"),
    ("algorithm.kl_coef=.nan", "algorithm.kl_coef"),
    ("algorithm.kl_coef=-0.01", "algorithm.kl_coef"),
    ("algorithm.entropy_coef=.nan", "algorithm.entropy_coef"),
    ("reward.timeout_s=.nan", "reward.timeout_s"),  # was accepted: accuracy 0 for the whole run
    ("reward.timeout_s=0", "reward.timeout_s"),
    ("rollout.temperature=.inf", "rollout.temperature"),
    ("rollout.top_k=-1", "rollout.top_k"),
    ("optim.max_steps=-1", "optim.max_steps"),  # was accepted: 0 updates, exit 0
    ("optim.epochs=0", "optim.epochs"),
    ("optim.epochs=-2", "optim.epochs"),
    ("optim.mini_batch_size=0", "optim.mini_batch_size"),  # was a ZeroDivisionError
    ("optim.micro_batch_size=0", "optim.micro_batch_size"),
    ("algorithm.dynamic_sampling_max_tries=0", "algorithm.dynamic_sampling_max_tries"),  # was max() of []
    ("optim.lr=.inf", "optim.lr"),
    ("optim.lr=nan", "optim.lr"),
    ("reward.terms=[{name: accuracy, weight: .nan}]", "reward.terms[0].weight"),
    ("reward.bonus_min_length=-5", "reward.bonus_min_length"),
    ("model.lora_dropout=1.0", "model.lora_dropout"),
    ("logging.eval_every=-1", "logging.eval_every"),
    # issue 24: a bound of 1e-300 s scored accuracy 0 for a whole run, 1e12 s was "raised on every response"
    ("reward.timeout_s=1e-300", "reward.timeout_s"),
    ("reward.timeout_s=1e12", "reward.timeout_s"),
    ("reward.workers=1000000", "reward.workers"),
    ("reward.terms=[{name: accuracy, weight: 1e308}]", "reward.terms"),  # a reward of inf, every step skipped
    ("seed=-1", "seed"),  # failed after the model was built
    ("seed=4294967296", "seed"),
    ("algorithm.mismatch_band=[2, 5]", "algorithm.mismatch_band"),
    ("algorithm.mismatch_band=[0.5]", "algorithm.mismatch_band"),
    ("algorithm.overlong_buffer=8192", "algorithm.overlong_buffer"),  # the budget: rollout.max_new_tokens
    ("algorithm.policy_loss=trpo", "algorithm.policy_loss"),
]


@pytest.mark.parametrize("override, key", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_every_numeric_value_is_range_checked(override, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: "):
        load_config(None, [override])


def test_yaml_1_1_exponent_floats_parse_everywhere(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1e-2\n  min_lr: 1e-3\n  betas: [9e-1, 9.5e-1]\nreward:\n  terms:\n"
                 "    - {name: accuracy, weight: 5e-1}\n")  # fmt: skip
    cfg = load_config(f)
    assert cfg.optim.lr == 0.01 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.reward.terms[0].weight == 0.5
    assert load_config(None, ["optim.lr=1e-2"]).optim.lr == 0.01


def test_version_and_print_config(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    cli = [sys.executable, "-m", "observe_r1.cli"]
    version = subprocess.run([*cli, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("observe-r1 ")
    out = tmp_path / "never"
    for command in ("train", "sft"):
        shown = subprocess.run([*cli, command, str(root / "configs" / "tiny_cpu.yaml"), "optim.lr=2e-5",
                                f"logging.output_dir={out}", "--print-config"], capture_output=True, text=True,
                               check=True).stdout  # fmt: skip
        resolved = yaml.safe_load(shown)
        assert resolved["optim"]["lr"] == 2e-5 and resolved["parallel"]["strategy"] == "ddp"
    assert not out.exists()  # nothing ran


def test_base_files_are_merged_under_the_config(tmp_path):
    (tmp_path / "base.yaml").write_text("rollout: {n: 4, max_new_tokens: 24}\noptim: {lr: 1.0e-4}\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nrollout: {n: 2}\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert (cfg.rollout.n, cfg.rollout.max_new_tokens, cfg.optim.lr) == (2, 24, 1e-4)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(tmp_path / "a.yaml")


# ------------------------------------------------------------------ issue 24: config files that mislead or hang


def test_a_key_given_twice_is_refused_naming_the_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1.0e-5\nseed: 1\noptim:\n  epochs: 2\n")  # YAML kept only the second optim
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}:4: the key 'optim' appears twice"):
        load_config(f)


def test_base_must_be_a_small_regular_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("base: /dev/zero\nseed: 1\n")  # read forever
    with pytest.raises(ConfigError, match="/dev/zero: not a regular file"):
        load_config(f)
    big = tmp_path / "big.yaml"
    big.write_text("seed: 1\n" + "#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_config(big)


def test_python_tags_are_an_error_naming_the_file_and_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\nmodel: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}:2: could not determine a constructor"):
        load_config(f)
    with pytest.raises(ConfigError, match="override 'seed=!!python/object:os.system'"):
        load_config(None, ["seed=!!python/object:os.system"])


def test_the_new_algorithm_keys_load():
    cfg = load_config(
        None,
        [
            "algorithm.policy_loss=gspo",
            "algorithm.mismatch_band=[0.5, 5]",
            "algorithm.overlong_buffer=1024",
            "model.trust_remote_code=true",
        ],
    )
    assert cfg.algorithm.policy_loss == "gspo" and cfg.algorithm.mismatch_band == [0.5, 5.0]
    assert cfg.algorithm.overlong_buffer == 1024 and cfg.model.trust_remote_code
