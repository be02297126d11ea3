"""AdaMML: real conditional execution equals the masked reference, skipping is real, random
policies, freezing for the two optimisers, loading stage-1 sub-networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adamml.config import ClipSettings, ModelConfig, PolicyConfig
from adamml.evaluation.metrics import selection_rates
from adamml.models.adamml import AdaMML, RandomPolicy, build_adamml
from adamml.models.backbones import PretrainedWeightsError
from adamml.models.build import load_unimodal
from adamml.models.recognition import build_recognition_net

B, K, T, H, C = 2, 3, 4, 32, 5
CLIP = ClipSettings(num_segments=K, frames_per_segment=T, stack_length=2, crop_size=H, audio_frames=32)
MODALITIES = ["rgb", "audio"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw) -> ModelConfig:
    cfg = dict(
        modalities=list(MODALITIES),
        backbones={"rgb": "resnet_tiny", "audio": "mobilenet_v2_tiny"},
        num_classes=C,
        fusion="weighted",
        policy=PolicyConfig(
            backbone="mobilenet_v2_tiny", frames=4, resolution=24, joint_dim=32, hidden_size=16
        ),
    )
    cfg.update(kw)
    return ModelConfig(**cfg)


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randn(B, K, T, 3, H, H, generator=g),
        "audio": torch.randn(B, K, 1, 32, 32, generator=g),
    }


def calibrate_batch_norm(model: AdaMML, batch: dict[str, torch.Tensor]) -> None:
    """Set BN running statistics from one batch: a freshly initialised network in eval mode
    otherwise shrinks activations towards zero, and "equal outputs" would prove nothing."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(batch, temperature=1.0, mode="masked")
    model.eval()


@pytest.fixture(scope="module")
def model() -> AdaMML:
    torch.manual_seed(0)
    net = build_adamml(tiny_cfg(), CLIP)
    calibrate_batch_norm(net, tiny_batch(seed=99))
    return net


def count_inputs(model: AdaMML) -> tuple[dict[str, list[int]], list]:
    """Record how many segments each recognition network was run on (forward hooks)."""
    seen: dict[str, list[int]] = {m: [] for m in model.modalities}
    handles = [
        model.recognition[m].register_forward_hook(
            lambda mod, args, out, m=m: seen[m].append(args[0].shape[0])
        )
        for m in model.modalities
    ]
    return seen, handles


def patterns() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    out = [torch.zeros(B, K, 2), torch.ones(B, K, 2)]
    out += [torch.bernoulli(torch.full((B, K, 2), p), generator=g) for p in (0.3, 0.5, 0.7, 0.5)]
    only_audio = torch.zeros(B, K, 2)
    only_audio[..., 1] = 1
    out.append(only_audio)
    return out


@pytest.mark.parametrize("index", range(7))
def test_conditional_equals_masked_in_eval_mode(model: AdaMML, index: int) -> None:
    decisions = patterns()[index]
    batch = tiny_batch()
    with torch.no_grad():
        masked = model(batch, mode="masked", decisions=decisions)
        cond = model(batch, mode="conditional", decisions=decisions)
    torch.testing.assert_close(cond.segment_logits, masked.segment_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cond.logits, masked.logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(cond.decisions, decisions)


def test_outputs_depend_on_the_input(model: AdaMML) -> None:
    """Guards the equality test above against a degenerate (constant) network."""
    with torch.no_grad():
        a = model(tiny_batch(0), decisions=torch.ones(B, K, 2)).logits
        b = model(tiny_batch(1), decisions=torch.ones(B, K, 2)).logits
    assert (a - b).abs().max() > 1e-3
    assert (a[0] - a[1]).abs().max() > 1e-3


def test_conditional_runs_each_network_once_on_only_the_selected_segments(model: AdaMML) -> None:
    decisions = torch.zeros(B, K, 2)
    decisions[0, 1, 0] = decisions[1, 2, 0] = 1  # rgb on 2 pairs, audio on none
    seen, handles = count_inputs(model)
    try:
        with torch.no_grad():
            model(tiny_batch(), mode="conditional", decisions=decisions)
            model(tiny_batch(), mode="masked", decisions=decisions)
    finally:
        for h in handles:
            h.remove()
    assert seen["rgb"] == [2, B * K]  # conditional: one call on 2 pairs; masked: all pairs
    assert seen["audio"] == [B * K]  # conditional: skipped entirely


def test_eval_defaults_to_conditional_and_deterministic_policy(model: AdaMML) -> None:
    model.eval()
    seen, handles = count_inputs(model)
    try:
        with torch.no_grad():
            torch.manual_seed(1)
            a = model(tiny_batch())
            torch.manual_seed(2)
            b = model(tiny_batch())
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(a.decisions, b.decisions)
    torch.testing.assert_close(a.logits, b.logits)
    selected = a.decisions.sum(dim=(0, 1)).int().tolist()
    for m, n in zip(model.modalities, selected, strict=True):
        assert sum(seen[m]) == 2 * n  # two calls, each on just the selected pairs
    assert a.policy_logits is not None and a.policy_logits.shape == (B, K, 2, 2)
    assert a.probs is not None and a.probs.shape == (B, K, 2)


def test_video_with_nothing_selected_gets_zero_logits(model: AdaMML) -> None:
    decisions = torch.ones(B, K, 2)
    decisions[1] = 0
    with torch.no_grad():
        out = model(tiny_batch(), decisions=decisions)
    assert torch.equal(out.logits[1], torch.zeros(C))
    assert out.logits[0].abs().max() > 0
    assert torch.equal(out.segment_logits[1], torch.zeros(K, 2, C))


def test_empty_segment_is_left_out_of_the_segment_average(model: AdaMML) -> None:
    full = torch.ones(B, K, 2)
    holed = full.clone()
    holed[:, 1] = 0  # segment 1: nothing selected
    batch = tiny_batch()
    with torch.no_grad():
        out_full = model(batch, decisions=full)
        out_holed = model(batch, decisions=holed)
    w = model.fusion.weights()  # (M,)
    fused = (out_full.segment_logits * w[None, None, :, None]).sum(dim=2)  # (B, K, C)
    torch.testing.assert_close(out_holed.logits, fused[:, [0, 2]].mean(dim=1), rtol=1e-4, atol=1e-5)


def test_masked_training_sends_gradients_to_policy_and_recognition() -> None:
    torch.manual_seed(0)
    net = build_adamml(tiny_cfg(), CLIP).train()
    out = net(tiny_batch(), temperature=5.0)
    F.cross_entropy(out.logits, torch.tensor([0, 3])).backward()
    head_grads = [p.grad for p in net.policy.heads.parameters()]
    assert all(g is not None for g in head_grads) and any(g.abs().sum() > 0 for g in head_grads)
    for i, m in enumerate(net.modalities):
        if out.decisions[..., i].sum() > 0:  # a sub-network that ran on something learns
            grads = [p.grad for p in net.recognition[m].parameters()]
            assert any(g is not None and g.abs().sum() > 0 for g in grads), m


def test_conditional_mode_in_training_also_reaches_the_policy() -> None:
    torch.manual_seed(0)
    net = build_adamml(tiny_cfg(), CLIP).train()
    decisions = None
    for seed in range(5):  # find a draw that selects something
        out = net(tiny_batch(), temperature=5.0, mode="conditional",
                  generator=torch.Generator().manual_seed(seed))
        if out.decisions.sum() > 0:
            decisions = out.decisions
            break
    assert decisions is not None
    F.cross_entropy(out.logits, torch.tensor([0, 3])).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.policy.heads.parameters())


def test_forced_decisions_skip_the_policy_and_are_checked(model: AdaMML) -> None:
    calls = []
    handle = model.policy.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            out = model(tiny_batch(), decisions=torch.ones(B, K, 2))
    finally:
        handle.remove()
    assert calls == [] and out.policy_logits is None
    with pytest.raises(ValueError, match=r"\(B, K, M\)"):
        model(tiny_batch(), decisions=torch.ones(B, K, 3))
    with pytest.raises(ValueError, match="mode"):
        model(tiny_batch(), mode="fast")


def test_missing_modality_in_batch_is_named(model: AdaMML) -> None:
    batch = tiny_batch()
    del batch["audio"]
    with pytest.raises(KeyError, match="audio"):
        model(batch, decisions=torch.ones(B, K, 2))


def test_selection_rates() -> None:
    d = torch.zeros(2, 4, 2)
    d[:, :, 1] = 1
    d[0, 0, 0] = 1
    rates = torch.tensor(selection_rates(d))
    torch.testing.assert_close(rates, torch.tensor([1 / 8, 1.0]))


def test_random_policy_matches_requested_rates_and_is_seeded() -> None:
    policy = RandomPolicy({"rgb": 0.25, "audio": 0.9}, seed=3)
    d = policy(500, 10, ["rgb", "audio"])
    assert d.shape == (500, 10, 2)
    assert set(d.unique().tolist()) <= {0.0, 1.0}
    rates = torch.tensor(selection_rates(d))
    assert abs(rates[0].item() - 0.25) < 0.03 and abs(rates[1].item() - 0.9) < 0.03
    again = RandomPolicy({"rgb": 0.25, "audio": 0.9}, seed=3)(500, 10, ["rgb", "audio"])
    assert torch.equal(d, again)
    other = RandomPolicy({"rgb": 0.25, "audio": 0.9}, seed=4)(500, 10, ["rgb", "audio"])
    assert not torch.equal(d, other)
    # Order follows the modalities asked for, not the dict.
    swapped = RandomPolicy({"rgb": 0.0, "audio": 1.0})(3, 2, ["audio", "rgb"])
    assert torch.equal(swapped[..., 0], torch.ones(3, 2)) and torch.equal(swapped[..., 1], torch.zeros(3, 2))


def test_random_policy_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="rgb"):
        RandomPolicy({"rgb": 1.5})
    with pytest.raises(KeyError, match="audio"):
        RandomPolicy({"rgb": 0.5})(2, 3, ["rgb", "audio"])


def test_random_policy_drives_the_model(model: AdaMML) -> None:
    policy = RandomPolicy({"rgb": 0.5, "audio": 0.5}, seed=0)
    with torch.no_grad():
        out = model(tiny_batch(), decisions=policy(B, K, model.modalities))
    assert out.logits.shape == (B, C)


def test_parameter_groups_partition_the_model(model: AdaMML) -> None:
    rec = {id(p) for p in model.recognition_parameters()}
    pol = {id(p) for p in model.policy_parameters()}
    assert rec and pol and not rec & pol
    assert rec | pol == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.fusion.parameters()} <= rec


@pytest.mark.parametrize("frozen", ["policy", "recognition"])
def test_frozen_parameters_do_not_move_under_an_optimiser(frozen: str) -> None:
    torch.manual_seed(0)
    net = build_adamml(tiny_cfg(), CLIP).train()
    getattr(net, f"freeze_{frozen}")()
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for _ in range(2):
        opt.zero_grad()
        out = net(tiny_batch(), temperature=5.0, decisions=None)
        F.cross_entropy(out.logits, torch.tensor([0, 3])).backward()
        opt.step()
    group = net.policy_parameters if frozen == "policy" else net.recognition_parameters
    frozen_names = {n for n, p in net.named_parameters() if any(p is q for q in group())}
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert not moved & frozen_names
    assert moved  # the other part did train
    getattr(net, f"unfreeze_{frozen}")()
    assert all(p.requires_grad for p in net.parameters())


def _stage1_state(seed: int, num_classes: int = C) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = build_recognition_net("rgb", "resnet_tiny", num_classes=num_classes, clip=CLIP)
    return net.state_dict()


def test_load_unimodal_copies_a_stage1_network(tmp_path: Path) -> None:
    net = build_adamml(tiny_cfg(), CLIP)
    state = _stage1_state(seed=7)
    path = tmp_path / "rgb.pt"
    torch.save({"model": state, "epoch": 3}, path)
    load_unimodal(net.recognition, "rgb", path)
    for key, value in net.recognition["rgb"].state_dict().items():
        assert torch.equal(value, state[key]), key
    # A checkpoint of a whole stage-1 MultiModalNet (keys under "recognition.rgb.") works too.
    state2 = _stage1_state(seed=8)
    torch.save({"model": {f"recognition.rgb.{k}": v for k, v in state2.items()}}, path)
    load_unimodal(net.recognition, "rgb", path)
    assert torch.equal(net.recognition["rgb"].fc.weight, state2["fc.weight"])


def test_load_unimodal_mismatch_names_the_file_and_keys(tmp_path: Path) -> None:
    net = build_adamml(tiny_cfg(), CLIP)
    path = tmp_path / "wrong_classes.pt"
    torch.save({"model": _stage1_state(seed=1, num_classes=C + 2)}, path)
    with pytest.raises(PretrainedWeightsError, match=r"wrong_classes\.pt.*fc\.weight"):
        load_unimodal(net.recognition, "rgb", path)
    with pytest.raises(ValueError, match="flow"):
        load_unimodal(net.recognition, "flow", path)


def test_three_modalities_with_flow_decided_from_rgbdiff() -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(
        modalities=["rgb", "audio", "flow"],
        backbones={"rgb": "resnet_tiny", "audio": "mobilenet_v2_tiny", "flow": "resnet_tiny"},
    )
    net = build_adamml(cfg, CLIP)
    g = torch.Generator().manual_seed(3)
    batch = tiny_batch() | {
        "flow": torch.randn(B, K, T, 2 * CLIP.stack_length, H, H, generator=g),
        "rgbdiff": torch.randn(B, K, T, 3 * CLIP.stack_length, H, H, generator=g),
    }
    calibrate_batch_norm(net, batch)
    assert net.policy.sources["flow"] == "rgbdiff"
    decisions = torch.bernoulli(torch.full((B, K, 3), 0.5), generator=g)
    with torch.no_grad():
        masked = net(batch, mode="masked", decisions=decisions)
        cond = net(batch, mode="conditional", decisions=decisions)
        learned = net(batch)
    torch.testing.assert_close(cond.logits, masked.logits, rtol=1e-4, atol=1e-5)
    assert learned.decisions.shape == (B, K, 3)


def test_the_guidance_loss_adds_to_the_policy_step_only_and_its_gradient_reaches_the_policy():
    from adamml.training.engine import Temperature, adamml_step
    from adamml.training.loss import guidance_loss
    from adamml.training.schedule import Phase

    torch.manual_seed(0)
    net = build_adamml(tiny_cfg(), CLIP)
    net.train()
    batch = {**tiny_batch(seed=3), "label": torch.tensor([1, 4])}
    policy_phase = Phase(block="alternate", trains="policy", block_epoch=0, block_epochs=1)
    recognition_phase = Phase(block="alternate", trains="recognition", block_epoch=0, block_epochs=1)
    losses = {}
    for weight in (0.0, 2.0):
        step = adamml_step(torch.ones(2), 10.0, False, Temperature(5.0), guidance=weight)
        for phase in (policy_phase, recognition_phase):
            torch.manual_seed(7)  # the same Gumbel draws for every weight
            losses[weight, phase.trains] = step(net, batch, phase).loss
    torch.manual_seed(7)
    out = net(batch, temperature=5.0, mode="masked")
    assert out.all_segment_logits.shape == (B, K, 2, C)
    expected = 2.0 * guidance_loss(out.policy_logits, out.all_segment_logits, batch)
    assert (losses[2.0, "policy"] - losses[0.0, "policy"]).item() == pytest.approx(expected.item(), rel=1e-4)
    assert losses[2.0, "recognition"].item() == pytest.approx(losses[0.0, "recognition"].item())
    net.zero_grad()
    expected.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.policy.parameters())
    assert net(batch, mode="conditional", sample=False).all_segment_logits is None
