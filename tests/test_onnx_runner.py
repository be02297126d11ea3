"""The ONNX export and its torch-free orchestrator: the same predictions as the torch model,
only the selected graphs run, flow only where selected, no torch imported, tampered graphs
refused; the numpy inputs equal the torch path's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numerics import assert_same_function
from test_export import tiny_checkpoint

from adamml.export.format import MANIFEST_FILE, PackageError
from adamml.export.package import export_package, model_from_package
from adamml.inference.pipeline import Predictor
from adamml.models.build import model_from_checkpoint
from adamml.runners.onnx import late_fusion, load_onnx

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")
OVERRIDES = ["model.modalities=[rgb,flow,audio]", "data.decode.flow=dis"]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from media import make_video

    return make_video(tmp_path_factory.mktemp("video") / "four_seconds.mp4", num_frames=100, fps=25.0)


def _predictor(bundle) -> Predictor:
    return Predictor(bundle, device="cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, video: Path) -> Path:
    """RGB + flow + audio, with thresholds between the untrained policy's margins on the
    test video so that each modality runs on two of its four segments."""
    folder = tmp_path_factory.mktemp("onnx")
    first = tiny_checkpoint(folder / "first" / "best.pt", OVERRIDES)
    predictor = _predictor(model_from_checkpoint(first))
    margins = predictor.decide(predictor.prepare(video))[0].numpy()  # (K, M)
    ordered = np.sort(margins, axis=0)
    assert (ordered[2] - ordered[1]).min() > 1e-4  # far from a tie: decisions cannot flip by rounding
    checkpoint = tiny_checkpoint(folder / "run" / "best.pt", OVERRIDES, thresholds=((ordered[1] + ordered[2]) / 2).tolist())
    return export_package(checkpoint, folder / "model", format="onnx")


@pytest.fixture(scope="module")
def torch_predictor(exported: Path) -> Predictor:
    """The exported model under the torch execution plan (prepared once: it takes a while)."""
    return _predictor(model_from_package(exported))


def test_one_graph_per_component_with_a_manifest(exported: Path) -> None:
    manifest = json.loads((exported / MANIFEST_FILE).read_text())
    assert set(manifest["graphs"]) == {"recognition_rgb", "recognition_flow", "recognition_audio",
                                       "policy_rgb", "policy_rgbdiff", "policy_audio", "policy_step"}
    assert manifest["opset"] == 17 and manifest["graphs"]["recognition_rgb"]["inputs"]["x"] == ["n", 4, 3, 32, 32]
    assert manifest["graphs"]["policy_rgbdiff"]["inputs"]["x"] == ["n", 2, 6, 32, 32]
    assert manifest["pipeline"]["defer_flow"] and "flow" not in manifest["pipeline"]["inputs"]
    assert manifest["fusion"]["name"] == "weighted" and "ImageNet" in manifest["normalisation"]["rgb"]
    assert all(len(g["sha256"]) == 64 for g in manifest["graphs"].values())


def test_numpy_inputs_equal_the_torch_paths(exported: Path, video: Path, torch_predictor: Predictor) -> None:
    predictor = torch_predictor
    prepared = predictor.prepare(video)
    runner = load_onnx(exported)
    mine = runner.prepare(video)
    for m in ("rgb", "rgbdiff", "audio"):
        assert mine["inputs"][m].shape == tuple(prepared.batch[m].shape[1:]), m
        assert_same_function(torch.from_numpy(mine["inputs"][m]), prepared.batch[m][0])
    predictor.add_flow(prepared, np.array([1, 3]))
    runner.add_flow(mine, np.array([1, 3]))
    assert np.array_equal(mine["inputs"]["flow"], prepared.batch["flow"][0].numpy())
    assert mine["flow_fields"] == prepared.flow_fields > 0


def test_onnx_predictions_match_the_torch_model(exported: Path, video: Path, torch_predictor: Predictor) -> None:
    predictor = torch_predictor
    prepared = predictor.prepare(video)
    margins = predictor.decide(prepared)
    decisions = predictor.model.policy.decide(margins)
    predictor.add_flow(prepared, decisions[0, :, 1].nonzero().flatten().numpy())
    with predictor.plan.context():
        expected = predictor.model(prepared.batch, mode="conditional", decisions=decisions).logits[0]
    runner = load_onnx(exported)
    outcome = runner.run(video, topk=4)
    assert np.array_equal(outcome.decisions, decisions[0].numpy())
    assert 0 < outcome.decisions.sum() < outcome.decisions.size  # some run, some are skipped
    assert_same_function(torch.from_numpy(outcome.margins).float(), margins[0].float())
    assert_same_function(torch.from_numpy(outcome.logits), expected)
    assert float(torch.from_numpy(outcome.logits).sub(expected).abs().max()) <= 1e-4
    torch_prediction = predictor.finish(prepared, topk=4)
    assert outcome.prediction.segments == torch_prediction.segments
    assert outcome.prediction.gflops == pytest.approx(torch_prediction.gflops)
    assert outcome.prediction.flow_fields == torch_prediction.flow_fields


def test_only_the_selected_graphs_run_and_flow_only_where_selected(exported: Path, video: Path) -> None:
    runner = load_onnx(exported)
    outcome = runner.run(video, thresholds=[1e9, 1e9, -1e9])  # audio only
    assert outcome.prediction.segments == [["audio"]] * 4
    assert runner.calls["recognition_rgb"] == runner.calls["recognition_flow"] == 0
    assert runner.calls["recognition_audio"] == 2  # 4 segments over 2 workers
    assert runner.calls["policy_step"] == 4 and outcome.prediction.flow_fields == 0 and runner.flow_fields == 0
    runner.calls.clear()
    outcome = runner.run(video, thresholds=[1e9, -1e9, 1e9])  # flow only
    assert runner.calls["recognition_rgb"] == runner.calls["recognition_audio"] == 0 and runner.calls["recognition_flow"] == 2
    every = outcome.prediction.flow_fields
    runner.calls.clear()
    margins = runner.decide(prepared := runner.prepare(video))
    one = np.full(3, 1e9)
    one[1] = (np.sort(margins[:, 1])[-1] + np.sort(margins[:, 1])[-2]) / 2  # flow on one segment
    outcome = runner.finish(prepared, thresholds=one.tolist())
    assert sum("flow" in s for s in outcome.prediction.segments) == 1 and runner.calls["recognition_flow"] == 1
    assert 0 < outcome.prediction.flow_fields < every
    assert outcome.prediction.flow_fields <= 4 * 2  # the selected segment's frames x stack length


def test_a_quota_exported_with_the_policy_decides_as_the_torch_model(video: Path, tmp_path: Path) -> None:
    """Thresholds nothing passes and quotas of (1, 0, 2) segments: every decision is the quota's."""
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pt", OVERRIDES, thresholds=[1e9, 1e9, 1e9], quota=[1, 0, 2])
    folder = export_package(checkpoint, tmp_path / "model", format="onnx")
    assert json.loads((folder / "config.json").read_text())["quota"] == {"rgb": 1, "flow": 0, "audio": 2}
    predictor = _predictor(model_from_package(folder))
    prepared = predictor.prepare(video)
    decisions = predictor.model.policy.decide(predictor.decide(prepared))[0]
    assert decisions.sum(dim=0).tolist() == [1.0, 0.0, 2.0]
    outcome = load_onnx(folder).run(video)
    assert np.array_equal(outcome.decisions, decisions.numpy())
    assert load_onnx(folder).run(video, thresholds=[1e9, 1e9, 1e9]).decisions.sum() == 0  # given thresholds: theirs alone


def test_the_runner_imports_no_torch(exported: Path, video: Path) -> None:
    script = f"""
import json, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchaudio", "torchvision"):
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, NoTorch())
from adamml.runners.onnx import load_onnx
model = load_onnx({str(exported)!r})
p = model.predict({str(video)!r}, topk=4)
assert not any(m.split(".")[0] == "torch" for m in sys.modules)
print(json.dumps({{"segments": p.segments, "top": p.top}}))
"""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = load_onnx(exported).predict(video, topk=4)
    assert result["segments"] == expected.segments
    assert [n for n, _ in result["top"]] == [n for n, _ in expected.top]


def test_a_tampered_graph_is_refused_in_one_line(exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(exported, copy)
    with open(copy / "recognition_rgb.onnx", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(PackageError, match="SHA-256 does not match") as info:
        load_onnx(copy)
    assert "\n" not in str(info.value) and "recognition_rgb.onnx" in str(info.value)


@pytest.mark.parametrize("name", ["unimodal", "average", "weighted", "classwise"])
@pytest.mark.parametrize("mode", ["normalised", "reference"])
def test_numpy_late_fusion_equals_the_fusion_heads(name: str, mode: str) -> None:
    from adamml.export.package import fusion_parameters
    from adamml.models.fusion import build_fusion

    modalities = ["rgb"] if name == "unimodal" else ["rgb", "flow", "audio"]
    torch.manual_seed(1)
    head = build_fusion(name, modalities, 5, None, mode)
    for p in head.parameters():
        p.data.normal_()
    logits = torch.randn(1, 4, len(modalities), 5)
    mask = (torch.rand(1, 4, len(modalities)) > 0.5).float()
    mask[0, 2] = 0.0  # a segment with nothing selected
    got = late_fusion((logits * mask[..., None])[0].numpy(), mask[0].numpy(), fusion_parameters(head, name))
    assert_same_function(torch.from_numpy(got), head(logits * mask[..., None], None, mask)[0].detach())


@pytest.mark.parametrize("kind", ["linear", "mel"])
def test_numpy_spectrogram_equals_torchaudios(kind: str) -> None:
    import dataclasses

    from adamml.config_files import load_config
    from adamml.modalities.audio import log_spectrogram
    from adamml.runners import spectrogram

    clip = dataclasses.replace(load_config("tiny", []).data.clip, spectrogram=kind, n_mels=32)
    rng = np.random.default_rng(0)
    t = np.arange(8000 * 3) / 8000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    centres = [0.2, 1.5, 2.9]
    expected = log_spectrogram(wave, 8000, centres, clip)
    got = spectrogram.log_spectrogram(wave, 8000, centres, clip)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert_same_function(torch.from_numpy(got), torch.from_numpy(expected))
    assert not spectrogram.log_spectrogram(wave, 8000, centres, clip, missing=True).any()


def test_int8_quantises_the_chosen_graphs_and_still_runs(exported: Path, video: Path, tmp_path: Path) -> None:
    import onnx

    from adamml.export.quantize import quantize_folder

    copy = tmp_path / "int8"
    shutil.copytree(exported, copy)
    before = json.loads((copy / MANIFEST_FILE).read_text())["graphs"]
    (tmp_path / "calibration.txt").write_text(f"{video}\n")
    manifest = quantize_folder(copy, tmp_path / "calibration.txt", keep_fp32=["policy_step", "policy_rgb"])
    assert set(manifest["quantization"]["graphs"]) == set(before) - {"policy_step", "policy_rgb"}
    for name, graph in manifest["graphs"].items():
        ops = {n.op_type for n in onnx.load(str(copy / graph["file"])).graph.node}
        kept = name in ("policy_step", "policy_rgb")
        assert ("QuantizeLinear" in ops) != kept, name
        assert (graph["sha256"] == before[name]["sha256"]) == kept, name
    runner = load_onnx(copy)  # the new SHA-256s check out
    outcome = runner.run(video, thresholds=[-1e9, -1e9, -1e9])
    assert np.isfinite(outcome.logits).all() and runner.calls["recognition_rgb"] == 2
    with pytest.raises(PackageError, match="no graph nope"):
        quantize_folder(copy, video, keep_fp32=["nope"])


def test_adamml_load_and_predict_run_an_onnx_folder_without_the_torch_model(exported: Path, video: Path,
                                                                             torch_predictor: Predictor, capsys) -> None:
    """The same export through the public API and the command line, as the torch model predicts."""
    import adamml
    from adamml.cli import main

    expected = torch_predictor.run(video, topk=4)
    model = adamml.load(exported, runtime="onnx")
    try:
        got = model.predict(video, topk=4)
    finally:
        model.close()
    assert got.segments == expected.segments and [n for n, _ in got.top] == [n for n, _ in expected.top]
    assert got.gflops == pytest.approx(expected.gflops)
    assert main(["predict", str(video), "--checkpoint", str(exported), "--runtime", "onnx", "--json", "--topk", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)["predictions"][0]
    assert printed["segments"] == expected.segments and printed["top"][0][0] == expected.top[0][0]
    # what the onnx runtime cannot honour is refused in one line, before anything runs
    assert main(["predict", str(video), "--checkpoint", str(exported), "--runtime", "onnx", "--budget", "0.5"]) == 2
    assert "--budget needs the torch runtime" in capsys.readouterr().err
    with pytest.raises(adamml.AdamMLError, match="budget"):
        adamml.load(exported, runtime="onnx", budget="50%")


def test_frame_gather_pool_equals_the_temporal_max_pool_and_the_graph_has_no_3d_pool(exported: Path) -> None:
    import onnx

    from adamml.export.onnx import _FrameGatherMaxPool
    from adamml.models.temporal import TemporalMaxPool

    for frames in (1, 2, 3, 5, 8):
        pool = TemporalMaxPool(frames)
        x = torch.randn(3 * frames, 4, 5, 6)
        assert torch.equal(_FrameGatherMaxPool(pool)(x), pool(x)), frames
    ops = [n for n in onnx.load(str(exported / "recognition_rgb.onnx")).graph.node]
    assert "Max" in {n.op_type for n in ops}  # the tiny RGB network pools over its 4 frames
    assert not [n for n in ops if n.op_type == "MaxPool" and len(next(a.ints for a in n.attribute if a.name == "kernel_shape")) == 3]


def test_int8_by_default_keeps_the_policy_fp32_and_its_decisions(exported: Path, video: Path, tmp_path: Path) -> None:
    """The default quantises the recognition graphs only, with unsigned 8-bit activations
    (onnxruntime's fast x86 kernels); the policy's graphs are untouched, so its decisions are."""
    import onnx

    from adamml.export.quantize import quantize_folder

    copy = tmp_path / "int8"
    shutil.copytree(exported, copy)
    before = json.loads((copy / MANIFEST_FILE).read_text())["graphs"]
    manifest = quantize_folder(copy, video)
    policy = {n for n, g in before.items() if g["role"] in ("policy_extractor", "policy_step")}
    assert policy == {"policy_rgb", "policy_rgbdiff", "policy_audio", "policy_step"}
    assert set(manifest["quantization"]["fp32"]) == policy
    assert set(manifest["quantization"]["graphs"]) == set(before) - policy
    for name, graph in manifest["graphs"].items():
        model = onnx.load(str(copy / graph["file"]))
        quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        if name in policy:
            assert not quantize and graph["sha256"] == before[name]["sha256"], name
            continue
        assert quantize, name
        constants = {t.name: t for t in model.graph.initializer}
        zero_points = [constants[n.input[2]] for n in quantize if n.input[2] in constants]
        assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points), name
    fp32, int8 = load_onnx(exported), load_onnx(copy)
    expected, got = fp32.run(video), int8.run(video)
    assert np.array_equal(got.margins, expected.margins) and np.array_equal(got.decisions, expected.decisions)
    assert np.isfinite(got.logits).all() and int8.calls == fp32.calls


def test_openvino_runs_the_same_graphs_with_the_same_decisions(exported: Path, video: Path) -> None:
    pytest.importorskip("openvino")
    import adamml

    expected = load_onnx(exported).run(video, topk=4)
    model = adamml.load(exported, runtime="openvino")
    try:
        got = model.run(video, topk=4)
    finally:
        model.close()
    assert model.runtime == "openvino" and model.calls["policy_step"] == 4
    assert np.array_equal(got.decisions, expected.decisions)
    assert 0 < got.decisions.sum() < got.decisions.size
    assert_same_function(torch.from_numpy(got.margins).float(), torch.from_numpy(expected.margins).float())
    assert float(np.abs(got.logits - expected.logits).max()) <= 1e-4
    assert got.prediction.segments == expected.prediction.segments


def test_an_unknown_graph_runtime_is_refused(exported: Path) -> None:
    with pytest.raises(PackageError, match="runtime 'tensorrt': expected one of onnx, openvino"):
        load_onnx(exported, runtime="tensorrt")
