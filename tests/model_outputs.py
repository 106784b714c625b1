"""Reference outputs of every registered architecture and every shipped weights folder, to check that a change to
the model code leaves what the models compute unchanged.

``tests/test_models_outputs.py`` compares against the small committed fixture ``tests/model_outputs.pt``; this
module builds the same records and (re)writes the fixture:

    python tests/model_outputs.py --write            # rewrite tests/model_outputs.pt (only for an intended change)
    python tests/model_outputs.py --full DIR         # full records (state dicts, every output) into DIR/*.pt
    python tests/model_outputs.py --compare DIR      # max abs difference of today's code against DIR/*.pt

The tiny models get deterministic weights filled by state-dict key (:func:`fill_by_key`), so their outputs do not
depend on the order in which a constructor creates its layers, and every layer (zero-initialised heads too) takes
part. The shipped weights are loaded strictly and run on the example images.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from test_models import TINY

from medseg_core.io import read_image, read_mask
from medseg_core.models import create_model, get_model_class, list_models
from medseg_core.transforms import eval_transform

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).with_name("model_outputs.pt")
SHIPPED = ("unet_lite0.edd2020", "unet_lite0.polyp_fast", "unet_lite2.neopolyp", "unet_lite2.polyp", "refiner.polyp")
#: The example image each shipped model is checked on (the gastroscopy model on the gastroscopy frame).
SHIPPED_IMAGE = {"unet_lite0.edd2020": "edd2020_ACB0004.jpg"}
POLYP_IMAGE = "polypgen_C3_EndoCV2021_00394.jpg"

#: Public methods beside ``forward`` whose outputs are recorded too.
EXTRA_OUTPUTS = {"attention_unet": ("attention_maps",), "ddanet": ("reconstruct",), "dynasiam": ("encode",)}

# Further settings beside each architecture's tiny one, for arguments that change the computation.
VARIANTS: dict[str, dict[str, Any]] = {
    "unet3plus_cgm": {"arch": "unet3plus", "cgm": True},
    "unetplusplus_no_final": {"arch": "unetplusplus", "decoder_channels": [16, 16, 8, 8]},
    "deeplabv3plus_os8": {"arch": "deeplabv3plus", "output_stride": 8},
    "dynasiam_mean": {"arch": "dynasiam", "dfi": False},
    "unet_grey": {"arch": "unet", "in_channels": 1},
}


def case_spec(case: str) -> tuple[str, dict[str, Any]]:
    """A case name, ``<registered name or variant>/c<classes>`` -> (architecture, constructor arguments)."""
    name, classes = case.rsplit("/c", 1)
    spec = dict(VARIANTS.get(name, {"arch": name}))
    arch = spec.pop("arch")
    return arch, {**TINY[arch], **spec, "num_classes": int(classes)}


def cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Case name -> (architecture, constructor arguments): every registered name with its tiny settings, with 1 and
    with 3 classes, then the variants with 1 class (the presence gate with 3 as well)."""
    names = [f"{name}/c{nc}" for name in list_models() for nc in (1, 3)]
    names += [f"{variant}/c{nc}" for variant, spec in VARIANTS.items() for nc in ((1, 3) if "cgm" in spec else (1,))]
    return {case: case_spec(case) for case in names}


def fill_by_key(model: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every floating-point tensor of the state dict, in sorted key order, from one seeded generator:
    weights ~ N(0, 1/fan_in), other vectors ~ 0.1 N(0, 1), running variances in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key in sorted(state):
            t = state[key]
            if not t.is_floating_point():
                continue
            if key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) / max(1, t[0].numel()) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def keys_digest(model: torch.nn.Module) -> str:
    """sha256 of the state dict's keys and shapes, sorted: any renamed, added or reshaped tensor changes it."""
    lines = sorted(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def tiny_input(model: torch.nn.Module, size: tuple[int, int] = (32, 48), batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, model.in_channels, *size, generator=g)
    if model.arch == "refiner":  # the last channel is a probability
        x[:, -1] = torch.rand(batch, *size, generator=g)
    return x


def _as_list(out: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def run_case(model: torch.nn.Module, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Eval-mode output, training-mode outputs (deep supervision lists included; dropout seeded) and the extra
    outputs some architectures expose. Training runs on a copy, so the model's running statistics stay."""
    out: dict[str, list[torch.Tensor]] = {}
    model.eval()
    with torch.no_grad():
        out["eval"] = _as_list(model(x))
        for method in EXTRA_OUTPUTS.get(model.arch, ()):
            out[method] = _as_list(getattr(model, method)(x))
    trained = copy.deepcopy(model).train()
    torch.manual_seed(2)
    with torch.no_grad():
        out["train"] = _as_list(trained(x))
        aux = trained.auxiliary_loss()
        if aux is not None:
            out["auxiliary_loss"] = [aux.reshape(1)]
    return out


def shipped_input(folder: Path, model: torch.nn.Module) -> torch.Tensor:
    """The example image preprocessed as the model's config says; the refiner gets the polyp example with its
    ground-truth mask, blurred and shrunk, as the coarse probability."""
    image = read_image(ROOT / "examples" / SHIPPED_IMAGE.get(folder.name, POLYP_IMAGE))
    t = eval_transform(model.input_size, model.mean, model.std, getattr(model, "views", None))
    x = t(image=image)["image"][None]
    if model.in_channels == 4:
        mask = read_mask(ROOT / "examples" / POLYP_IMAGE.replace(".jpg", "_mask.png"))
        y = torch.as_tensor(t(image=image, mask=mask)["mask"])[None, None].float()
        x = torch.cat([x, F.avg_pool2d(y, 9, stride=1, padding=4) * 0.8], dim=1)
    return x


def load_shipped(name: str) -> torch.nn.Module:
    """A shipped weights folder rebuilt from its config and loaded with ``strict=True``."""
    folder = ROOT / "weights" / name
    arch = json.loads((folder / "config.json").read_text())["arch"]
    return get_model_class(arch).from_pretrained(folder, strict=True).eval()


def digest(outputs: dict[str, list[torch.Tensor]]) -> tuple[list[str], torch.Tensor]:
    """A few hundred numbers that stand for a case's outputs: per tensor its shape, its sum and sum of squares,
    and its maps average-pooled to at most 8 channels of 4x6 (flat, float32)."""
    shapes, parts = [], []
    for kind in sorted(outputs):
        for t in outputs[kind]:
            t = t.detach().double()
            shapes.append(f"{kind}:{tuple(t.shape)}")
            if t.dim() == 4:
                size = (min(8, t.shape[1]), min(4, t.shape[2]), min(6, t.shape[3]))
                pooled = F.adaptive_avg_pool3d(t[:, None], size)
            else:
                pooled = t
            parts += [t.sum().reshape(1), t.square().sum().reshape(1), pooled.flatten()]
    return shapes, torch.cat(parts).float()


def fixture_records() -> dict[str, Any]:
    """What the committed fixture holds: per case (tiny settings, :func:`fill_by_key` weights) and per shipped
    folder (its own weights, on an example image) the keys digest and the :func:`digest` of the outputs."""
    records: dict[str, Any] = {"cases": {}, "shipped": {}}
    for case, (arch, kwargs) in cases().items():
        torch.manual_seed(0)
        model = create_model(arch, **kwargs)
        fill_by_key(model)
        records["cases"][case] = {"keys": keys_digest(model), "outputs": digest(run_case(model, tiny_input(model)))}
    for name in SHIPPED:
        model = load_shipped(name)
        with torch.no_grad():
            logits = model(shipped_input(ROOT / "weights" / name, model))
        records["shipped"][name] = {"keys": keys_digest(model), "outputs": digest({"eval": [logits]})}
    return records


def full_records(out_dir: Path) -> None:
    """Full records for a one-off comparison outside git: for every case the seeded default initialisation (state
    dict), the input and every output; for every shipped folder the logits on every example image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tiny = {}
    for case, (arch, kwargs) in cases().items():
        torch.manual_seed(0)
        model = create_model(arch, **kwargs)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        x = tiny_input(model, (64, 96))
        tiny[case] = {"state": state, "config": model.config, "input": x, "outputs": run_case(model, x)}
    torch.save(tiny, out_dir / "tiny.pt")
    shipped = {}
    for name in SHIPPED:
        model = load_shipped(name)
        outs = {}
        for path in sorted((ROOT / "examples").glob("*.jpg")):
            image = read_image(path)
            t = eval_transform(model.input_size, model.mean, model.std, getattr(model, "views", None))
            x = t(image=image)["image"][None]
            if model.in_channels == 4:
                x = torch.cat([x, torch.sigmoid(x[:, :1])], dim=1)  # a fixed stand-in for the coarse probability
            with torch.no_grad():
                outs[path.name] = {"input": x, "logits": model(x)}
        shipped[name] = outs
    torch.save(shipped, out_dir / "shipped.pt")


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


def compare(ref_dir: Path) -> dict[str, float]:
    """Max abs difference per case and per shipped folder of today's code against :func:`full_records`' files:
    each tiny model is rebuilt, given the recorded state dict (strict) and run on the recorded input."""
    diffs: dict[str, float] = {}
    tiny = torch.load(ref_dir / "tiny.pt", weights_only=False)
    for case, rec in tiny.items():
        arch, kwargs = case_spec(case)
        torch.manual_seed(0)
        model = create_model(arch, **kwargs)
        same_init = all(torch.equal(v, rec["state"][k]) for k, v in model.state_dict().items()) and \
            model.state_dict().keys() == rec["state"].keys()
        model.load_state_dict(rec["state"], strict=True)
        assert model.config == rec["config"], f"{case}: config differs"
        outs = run_case(model, rec["input"])
        assert outs.keys() == rec["outputs"].keys(), f"{case}: outputs {sorted(outs)} != {sorted(rec['outputs'])}"
        diffs[case] = max(_max_diff(outs[k], rec["outputs"][k]) for k in outs)
        print(f"{case:32s} max|diff| {diffs[case]:.1e}  seeded init {'identical' if same_init else 'DIFFERS'}")
    shipped = torch.load(ref_dir / "shipped.pt", weights_only=False)
    for name, per_image in shipped.items():
        model = load_shipped(name)
        worst = 0.0
        for rec in per_image.values():
            with torch.no_grad():
                worst = max(worst, _max_diff([model(rec["input"])], [rec["logits"]]))
        diffs[name] = worst
        print(f"{name:32s} max|diff| {worst:.1e} on {len(per_image)} example images")
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help=f"rewrite {FIXTURE.name}")
    group.add_argument("--full", type=Path, metavar="DIR", help="write full records into DIR")
    group.add_argument("--compare", type=Path, metavar="DIR", help="compare today's code with DIR's records")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.write:
        torch.save(fixture_records(), FIXTURE)
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1024:.0f} KB)")
    elif args.full:
        full_records(args.full)
        print(f"wrote {args.full}/tiny.pt and shipped.pt")
    else:
        diffs = compare(args.compare)
        print(f"largest max|diff| over {len(diffs)} records: {max(diffs.values()):.1e}")


if __name__ == "__main__":
    main()
