import math

import torch

from observe_r1.algos.preference import dpo_loss, shrink_perturb


def test_dpo_loss_against_hand_computed_numbers():
    # pair 0: chosen up 1.0 vs reference, rejected down 1.0 -> margin 0.1 * 2 = 0.2
    # pair 1: the policy equals the reference -> margin 0, loss log 2
    loss, margin = dpo_loss(torch.tensor([-9.0, -5.0]), torch.tensor([-11.0, -6.0]), torch.tensor([-10.0, -5.0]),
                            torch.tensor([-10.0, -6.0]), beta=0.1)  # fmt: skip
    torch.testing.assert_close(margin, torch.tensor([0.2, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([math.log(1 + math.exp(-0.2)), math.log(2.0)]))


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = torch.tensor([-5.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    loss, _ = dpo_loss(chosen, rejected, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.5)
    loss.sum().backward()
    assert chosen.grad is not None and rejected.grad is not None
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.25]))  # -beta * sigmoid(-0) = -0.25
    torch.testing.assert_close(rejected.grad, torch.tensor([0.25]))


def test_shrink_perturb_by_hand():
    old = {"w": torch.tensor([1.0, -2.0]), "ids": torch.tensor([0, 1, 2])}
    fresh = {"w": torch.tensor([0.5, 0.5]), "ids": torch.tensor([7, 7, 7])}
    new = shrink_perturb(old, fresh, 0.4, 0.1)
    torch.testing.assert_close(new["w"], torch.tensor([0.45, -0.75]))
    assert new["ids"].tolist() == [0, 1, 2]
    import pytest

    with pytest.raises(ValueError, match="models differ"):
        shrink_perturb(old, {"w": fresh["w"]})


def test_build_policy_shrinks_and_perturbs_the_checkpoint(tiny_model_dir):
    from observe_r1.config import load_config
    from observe_r1.models.policy import fresh_init, load_model
    from observe_r1.training.setup import build_policy

    cfg = load_config(None, [f"model.path={tiny_model_dir}", "model.warm_start=shrink_perturb", "model.shrink=0.5",
                             "model.perturb=0.2", "seed=3"])  # fmt: skip
    old = load_model(str(tiny_model_dir))
    fresh = fresh_init(old, 3).state_dict()
    new = build_policy(cfg).state_dict()
    for name, value in old.state_dict().items():
        torch.testing.assert_close(new[name], 0.5 * value + 0.2 * fresh[name])
    assert not torch.equal(fresh[name], value)
