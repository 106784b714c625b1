"""Write a weights folder's model card from what was measured: its config, the training summary and evaluate.py JSONs.

    python train/model_card.py --weights weights/unet_lite0.polyp --name unet_lite0.polyp \
        --summary runs/unet_lite0.polyp/train_summary.json --eval runs/unet_lite0.polyp/eval/*.json \
        --notes-file docs/results/unet_lite0.polyp_card_notes.md

Numbers are copied from the JSON files that ``train/evaluate.py --json`` wrote; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medseg_core.hub import write_model_card
from medseg_core.training import data_text, recipe_text


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="Write README.md (model card) for a weights folder from measured results.")
    p.add_argument("--weights", required=True, help="folder with config.json and model.safetensors")
    p.add_argument("--name", required=True, help="the weights' name, e.g. unet_lite0.polyp")
    p.add_argument("--summary", help="train_summary.json of the training run")
    p.add_argument("--eval", nargs="*", default=[], help="JSON files written by train/evaluate.py --json")
    p.add_argument("--notes-file", help="markdown appended to the card (history of the run, caveats)")
    p.add_argument("--license", default="apache-2.0",
                   help="Hub licence identifier of the weights, e.g. cc-by-nc-sa-4.0 for weights trained on "
                        "non-commercial data (default: apache-2.0)")
    p.add_argument("--tags", nargs="+", default=["polyp"], help="Hub tags besides medical-imaging, "
                   "image-segmentation and endoscopy (default: polyp)")
    args = p.parse_args(argv)
    folder = Path(args.weights)
    config = json.loads((folder / "config.json").read_text())
    recipe = "See the training summary."
    data = "Unknown."
    if args.summary:
        summary = json.loads(Path(args.summary).read_text())
        data, recipe = data_text(summary["config"]), recipe_text(summary["config"], summary)
    metrics = {}
    for path in args.eval:
        result = json.loads(Path(path).read_text())
        label = f"{result['split']} (n={result['n']})"
        if isinstance(result.get("threshold"), list):  # the per-class thresholds recorded with the weights
            label += ", thresholds " + " / ".join(f"{t:g}" for t in result["threshold"])
        if result.get("class_bias"):  # the class bias recorded with the weights
            label += ", class bias " + " / ".join(f"{b:g}" for b in result["class_bias"])
        if result.get("tta"):
            label += ", flip TTA"
        if result.get("postprocess"):
            label += ", post-processing " + " + ".join(result["postprocess"])
        metrics[label] = {k: v for k, v in result.items() if isinstance(v, float) and k != "threshold"}
    notes = Path(args.notes_file).read_text() if args.notes_file else ""
    return write_model_card(folder, name=args.name, config=config, data=data, recipe=recipe, metrics=metrics,
                            notes=notes, license=args.license, tags=args.tags)


if __name__ == "__main__":
    main()
