import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from observe_r1.rollout.base import PromptBatch, SamplingParams, select_groups
from observe_r1.rollout.hf import VISION_TOKENS, GumbelSampler, HFRollout, gumbel_noise, sequence_seeds


@pytest.fixture(scope="module")
def backend(tiny_model_dir, encoder):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    return HFRollout(model, encoder)


def prompt(encoder, text, colour=(200, 30, 30), size=112):
    img = Image.new("RGB", (size, size), colour)
    return encoder.encode(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}], [img]
    )


@pytest.fixture(scope="module")
def prompts(encoder):
    return [prompt(encoder, "How many?"), prompt(encoder, "What colour is the big shape on the left?", (0, 90, 200), 140),
            prompt(encoder, "Sum?", (10, 200, 10))]  # fmt: skip


def test_rollout_shapes_masks_and_group_order(backend, prompts):
    sampling = SamplingParams(n=4, max_new_tokens=12)
    r = backend.generate(PromptBatch(prompts, [10, 11, 12], seed=1), sampling)
    assert (
        len(r) == 12
        and r.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
        and r.group_ids == [10] * 4 + [11] * 4 + [12] * 4
    )
    assert r.completion_ids.shape == r.completion_mask.shape and r.completion_ids.shape[1] <= 12
    assert torch.equal(r.completion_mask.sum(1), r.lengths)
    eos = torch.tensor(backend.eos_token_ids)
    for i in range(12):
        row = r.completion_ids[i, : r.lengths[i]]
        ends = torch.isin(row, eos)
        assert bool(r.truncated[i]) == (not ends.any())
        if ends.any():  # the end token is the last counted token
            assert ends.nonzero()[0].item() == r.lengths[i] - 1
        else:
            assert r.lengths[i] == 12


def test_same_prompt_same_responses_alone_batched_or_chunked(backend, prompts):
    sampling = SamplingParams(n=4, max_new_tokens=10)
    batched = backend.generate(PromptBatch(prompts, [5, 6, 7], seed=3), sampling)
    alone = backend.generate(PromptBatch(prompts[1:2], [6], seed=3), sampling)
    chunked = backend.generate(
        PromptBatch(prompts, [5, 6, 7], seed=3), SamplingParams(n=4, max_new_tokens=10, chunk_size=3)
    )
    assert batched.texts[4:8] == alone.texts
    assert batched.texts == chunked.texts
    other_seed = backend.generate(PromptBatch(prompts, [5, 6, 7], seed=4), sampling)
    assert other_seed.texts != batched.texts
    assert len(set(batched.texts[:4])) > 1  # the n responses of a group differ


def test_vision_placeholders_are_never_generated(backend, prompts, encoder):
    vocab = encoder.tokenizer.get_vocab()
    banned = torch.tensor([vocab[t] for t in VISION_TOKENS])
    r = backend.generate(
        PromptBatch(prompts, [1, 2, 3], seed=0), SamplingParams(n=8, max_new_tokens=24, temperature=3.0)
    )
    assert not torch.isin(r.completion_ids * r.completion_mask, banned[banned != 0]).any()


def test_greedy_is_one_deterministic_response(backend, prompts):
    a = backend.generate(PromptBatch(prompts, [0, 1, 2]), SamplingParams(n=8, greedy=True, max_new_tokens=8))
    b = backend.generate(
        PromptBatch(prompts, [7, 8, 9], seed=5), SamplingParams(greedy=True, max_new_tokens=8)
    )
    assert len(a) == 3 and a.texts == b.texts


def test_gumbel_max_samples_the_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    seeds = sequence_seeds(0, list(range(20000)), 1)
    sampler = GumbelSampler(seeds, prompt_width=0, sampling=SamplingParams(temperature=1.0))
    picks = sampler(torch.zeros(20000, 3, dtype=torch.long), logits.expand(20000, 5)).argmax(-1)
    freq = torch.bincount(picks, minlength=5).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.012, rtol=0)


def test_top_k_and_temperature_are_applied():
    logits = torch.tensor([[3.0, 2.9, 0.0, -1.0]]).expand(5000, 4)
    seeds = sequence_seeds(1, list(range(5000)), 1)
    topk = GumbelSampler(seeds, 0, SamplingParams(top_k=2))(
        torch.zeros(5000, 1, dtype=torch.long), logits
    ).argmax(-1)
    assert set(topk.tolist()) == {0, 1}
    cold = GumbelSampler(seeds, 0, SamplingParams(temperature=0.05))(
        torch.zeros(5000, 1, dtype=torch.long), logits
    ).argmax(-1)
    assert (cold == 0).float().mean() > 0.8


def test_noise_is_a_pure_function_of_seed_position_and_token():
    seeds = sequence_seeds(0, [1, 2], 2)
    assert len(set(seeds.tolist())) == 4
    a = gumbel_noise(seeds, 3, 50, torch.device("cpu"))
    assert torch.equal(a, gumbel_noise(seeds, 3, 50, torch.device("cpu")))
    assert torch.equal(a[2:], gumbel_noise(seeds[2:], 3, 50, torch.device("cpu")))
    assert not torch.equal(a, gumbel_noise(seeds, 4, 50, torch.device("cpu")))


def test_select_groups_keeps_group_major_order(backend, prompts):
    r = backend.generate(PromptBatch(prompts, [0, 1, 2], seed=2), SamplingParams(n=2, max_new_tokens=6))
    s = select_groups([(r, [2]), (r, [0])], 2, pad_token_id=0)
    assert (
        s.texts == r.texts[4:6] + r.texts[0:2]
        and s.group_ids == [2, 2, 0, 0]
        and s.prompt_index == [0, 0, 1, 1]
    )
    assert torch.equal(s.lengths, torch.cat([r.lengths[4:6], r.lengths[0:2]]))


def test_each_distinct_image_is_encoded_once_per_rollout(backend, prompts, monkeypatch):
    """The n responses to a prompt share its images: the vision tower sees each image once per generate call
    (was n times), and the responses are those generated from each row's own copy of the pixels."""
    import observe_r1.models.policy as policy

    seen: list[int] = []
    tower = backend.model.model.visual
    handle = tower.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    sampling = SamplingParams(n=4, max_new_tokens=10, chunk_size=6)  # chunks cut through the second group
    try:
        shared = backend.generate(PromptBatch(prompts, [5, 6, 7], seed=3), sampling)
        patches = [int(p.image_grid_thw.prod(-1).sum()) for p in prompts]
        assert seen == [patches[0] + patches[1], patches[1] + patches[2]]
        seen.clear()
        monkeypatch.setattr(policy, "takes_encoded_images", lambda model: False)  # each row its own pixels
        copied = backend.generate(PromptBatch(prompts, [5, 6, 7], seed=3), sampling)
        assert seen == [4 * patches[0] + 2 * patches[1], 2 * patches[1] + 4 * patches[2]]
    finally:
        handle.remove()
    assert torch.equal(shared.completion_ids, copied.completion_ids) and shared.texts == copied.texts


def test_recorded_logprobs_are_the_trainers(tiny_model_dir, encoder):
    """An async engine's HF backend records the log-probs of what it samples (no second forward pass): they
    equal the trainer's log-probs of the same tokens, and the tokens are the same as without recording."""
    from observe_r1.models.policy import completion_logprobs, load_model
    from observe_r1.rollout.batch import sequence_inputs

    model = load_model(tiny_model_dir).eval()
    prompts = [encoder.encode([{"role": "user", "content": f"count to {k}"}], [], f"p{k}") for k in range(2)]
    batch = PromptBatch(prompts, [3, 4], seed=1)
    sampling = SamplingParams(n=3, temperature=0.7, max_new_tokens=12)
    plain = HFRollout(model, encoder).generate(batch, sampling)
    backend = HFRollout(model, encoder)
    backend.record_logprobs = True
    got = backend.generate(batch, sampling)
    assert torch.equal(got.completion_ids, plain.completion_ids) and plain.logprobs is None
    with torch.no_grad():
        trainer, _ = completion_logprobs(model, sequence_inputs(got, list(range(len(got))), encoder), 0.7)
    mask = got.completion_mask.bool()
    assert (
        got.logprobs is not None and (got.logprobs[:, : trainer.shape[1]] - trainer)[mask].abs().max() < 1e-4
    )


def test_partial_rollouts_segment_switch_weights_and_restart(tiny_model_dir, encoder, prompts):
    """rollout.in_flight: a rollout in segments gives the unsegmented tokens while the weights stay; new weights
    after a segment sample the rest (each token's version recorded, its log-prob the new policy's); restart
    generates it all again with them."""
    from observe_r1.models.policy import completion_logprobs, load_model
    from observe_r1.rollout.batch import sequence_inputs
    from observe_r1.rollout.partial import PartialRollout

    old, new = load_model(tiny_model_dir).eval(), load_model(tiny_model_dir).eval()
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = PromptBatch(prompts[:2], [3, 4], seed=2)
    sampling = SamplingParams(n=3, temperature=1.0, max_new_tokens=20)
    whole = HFRollout(old, encoder).generate(batch, sampling)
    fresh = HFRollout(new, encoder).generate(batch, sampling)

    def segmented(switch_after: int | None, restart: bool = False) -> tuple[PartialRollout, object]:
        hf = HFRollout(old, encoder)
        hf.record_logprobs = True
        calls = []

        def between() -> int:
            calls.append(1)
            if switch_after is not None and len(calls) > switch_after:
                hf.update_weights(new)
                return 1
            return 0

        partial = PartialRollout(hf, encoder, 6, between, restart)
        return partial, partial.generate(batch, sampling)

    _, same = segmented(None)
    assert same.texts == whole.texts and torch.equal(same.completion_ids, whole.completion_ids)
    assert same.versions is not None and int(same.versions.max()) == 0
    _, switched = segmented(1)  # the first segment (6 tokens) by version 0, the rest by version 1
    mask = switched.completion_mask.bool()
    assert torch.equal(switched.completion_ids[:, :6], whole.completion_ids[:, :6])
    assert switched.versions is not None
    assert (switched.versions[:, :6][mask[:, :6]] == 0).all() and (
        switched.versions[:, 6:][mask[:, 6:]] == 1
    ).all()
    assert not torch.equal(switched.completion_ids, whole.completion_ids)
    with torch.no_grad():
        by_old, _ = completion_logprobs(
            old, sequence_inputs(switched, list(range(len(switched))), encoder), 1.0
        )
        by_new, _ = completion_logprobs(
            new, sequence_inputs(switched, list(range(len(switched))), encoder), 1.0
        )
    width = by_old.shape[1]
    assert switched.logprobs is not None
    behaviour = switched.logprobs[:, :width]
    assert (behaviour - by_old)[:, :6][mask[:, :6]].abs().max() < 1e-3
    later = mask[:, 6:width]
    assert (behaviour - by_new)[:, 6:][later].abs().max() < 1e-3
    partial, restarted = segmented(1, restart=True)
    assert partial.restarts == 1 and restarted.texts == fresh.texts
    assert (
        restarted.versions is not None and (restarted.versions[restarted.completion_mask.bool()] == 1).all()
    )
