"""Label schemas: what a model's outputs mean, written into its ``config.json`` and read by every entry point.

A schema says the ``task`` (``binary``; ``multiclass``: one softmax over classes, background first;
``multilabel``: one sigmoid per class, classes may overlap, no background class), the ``class_names`` and display
``colours`` (the same order), and how mask files store the classes (``mask_encoding``, see
:mod:`medseg_core.io`). Nothing in medseg infers a schema from the number of output channels, except
:func:`schema_from_config` for weights saved before schemas existed, by a documented rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["BKAI_NEOPOLYP", "MASK_ENCODINGS", "TASKS", "LabelSchema", "default_colours", "schema_from_config"]

TASKS = ("binary", "multiclass", "multilabel")
Task = Literal["binary", "multiclass", "multilabel"]
#: How mask files store classes (medseg_core.io.read_mask): 0/255 grey; pixel = class index; a colour per class
#: (nearest colour); one grey file per class ``<stem>_<class>.png`` (multi-label); rows of a run-length CSV.
MASK_ENCODINGS = ("binary", "indexed", "palette", "per_class_files", "rle_csv")
#: Display colours for classes 1.. when a schema names none (0, background, is never drawn).
_COLOURS = ((255, 48, 48), (40, 220, 80), (60, 120, 255), (255, 200, 0), (200, 60, 255), (0, 210, 210),
            (255, 128, 0), (160, 100, 40))


def default_colours(n: int, background: bool = True) -> tuple[tuple[int, int, int], ...]:
    """``n`` display colours: black for the background (when ``background``), then a fixed distinct palette."""
    fg = [_COLOURS[i % len(_COLOURS)] for i in range(n - 1 if background else n)]
    return tuple([(0, 0, 0)] + fg if background else fg)


@dataclass(frozen=True)
class LabelSchema:
    """What a model predicts and how its masks are stored.

    Attributes:
        task: ``binary`` | ``multiclass`` | ``multilabel``.
        class_names: binary and multiclass: every class of the mask, background first (``("background",
            "polyp")``); multilabel: the classes only (``("BE", "suspicious", ...)``), each its own sigmoid.
        colours: one RGB colour per class name (overlays, legends, ``palette`` decoding).
        mask_encoding: one of :data:`MASK_ENCODINGS`.
    """

    task: Task
    class_names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] = ()
    mask_encoding: str = "binary"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if self.mask_encoding not in MASK_ENCODINGS:
            raise ValueError(f"mask_encoding must be one of {', '.join(MASK_ENCODINGS)}; got {self.mask_encoding!r}")
        names = tuple(str(n) for n in self.class_names)
        minimum = 1 if self.task == "multilabel" else 2
        if len(names) < minimum or len(set(names)) != len(names) or not all(names):
            raise ValueError(f"class_names must be {minimum} or more distinct non-empty names; got {list(names)}")
        if self.task == "binary" and len(names) != 2:
            raise ValueError(f"a binary schema has two classes (background, lesion); got {list(names)}")
        object.__setattr__(self, "class_names", names)
        colours = tuple(tuple(int(v) for v in c) for c in self.colours) or default_colours(
            len(names), background=self.task != "multilabel")
        if len(colours) != len(names) or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colours):
            raise ValueError(f"colours must be one RGB triple (0..255) per class; got {list(self.colours)}")
        object.__setattr__(self, "colours", colours)
        if self.task == "multilabel" and self.mask_encoding not in ("per_class_files", "rle_csv"):
            raise ValueError("a multilabel schema stores masks as per_class_files or rle_csv (classes overlap)")

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def foreground(self) -> tuple[str, ...]:
        """The lesion classes (without the background)."""
        return self.class_names if self.multilabel else self.class_names[1:]

    @property
    def foreground_colours(self) -> tuple[tuple[int, int, int], ...]:
        return self.colours if self.multilabel else self.colours[1:]

    def outputs_ok(self, num_classes: int) -> bool:
        """Whether a model with ``num_classes`` output channels fits this schema."""
        if self.task == "binary":
            return num_classes in (1, 2)
        return num_classes == len(self.class_names)

    def to_config(self) -> dict[str, Any]:
        """The keys written into ``config.json``."""
        return {"task": self.task, "class_names": list(self.class_names),
                "colours": [list(c) for c in self.colours], "mask_encoding": self.mask_encoding}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LabelSchema:
        return cls(task=data["task"], class_names=tuple(data["class_names"]),
                   colours=tuple(tuple(c) for c in data.get("colours") or ()),
                   mask_encoding=data.get("mask_encoding", "binary"))


#: BKAI-IGH NeoPolyp's 3-class masks: black background, red neoplastic, green non-neoplastic.
BKAI_NEOPOLYP = LabelSchema("multiclass", ("background", "neoplastic", "non-neoplastic"),
                            ((0, 0, 0), (255, 0, 0), (0, 255, 0)), "palette")


def schema_from_config(config: Mapping[str, Any]) -> LabelSchema:
    """The schema of a ``config.json`` (or a recipe's ``labels`` section merged with the model's ``num_classes``).

    Weights saved before schemas existed carry no ``task``; for them the documented default is: one or two output
    channels -> ``binary`` (``background``, ``lesion``; masks 0/255); more -> ``multiclass`` with classes named
    ``class 1``, ``class 2``, ... stored as ``indexed`` masks. No class names are ever guessed beyond that.
    """
    n = int(config.get("num_classes", 1))
    if config.get("task"):
        schema = LabelSchema.from_mapping(config)
    elif n <= 2:
        schema = LabelSchema("binary", ("background", "lesion"), mask_encoding="binary")
    else:
        schema = LabelSchema("multiclass", ("background", *[f"class {c}" for c in range(1, n)]),
                             mask_encoding="indexed")
    if not schema.outputs_ok(n):
        raise ValueError(f"the label schema ({schema.task}, {len(schema.class_names)} classes) does not fit a model "
                         f"with {n} output channels")
    return schema
