"""Label schemas: validation, the documented default for old weights, and patient-level splits."""

import pytest

from medseg_core.data import group_split
from medseg_core.io import slice_group
from medseg_core.labels import LabelSchema, schema_from_config


def test_schema_validation_names_the_problem():
    with pytest.raises(ValueError, match="task must be one of"):
        LabelSchema("segmentation", ("background", "lesion"))
    with pytest.raises(ValueError, match="two classes"):
        LabelSchema("binary", ("background", "a", "b"))
    with pytest.raises(ValueError, match="distinct"):
        LabelSchema("multiclass", ("background", "a", "a"), mask_encoding="indexed")
    with pytest.raises(ValueError, match="one RGB triple"):
        LabelSchema("multiclass", ("background", "a"), ((0, 0, 0),), "palette")
    with pytest.raises(ValueError, match="per_class_files or rle_csv"):
        LabelSchema("multilabel", ("a", "b"), mask_encoding="binary")
    with pytest.raises(ValueError, match="mask_encoding"):
        LabelSchema("binary", ("background", "lesion"), mask_encoding="jpeg")


def test_old_weights_get_the_documented_default_and_nothing_is_guessed():
    assert schema_from_config({"num_classes": 1}).class_names == ("background", "lesion")
    assert schema_from_config({"num_classes": 2}).task == "binary"
    four = schema_from_config({"num_classes": 4})  # a 4-class MRI model is not read as binary or as NeoPolyp
    assert four.task == "multiclass" and four.class_names == ("background", "class 1", "class 2", "class 3")
    assert schema_from_config({"num_classes": 3}).class_names[1] == "class 1"
    with pytest.raises(ValueError, match="does not fit"):
        schema_from_config({"num_classes": 3, "task": "binary", "class_names": ["background", "lesion"]})
    multi = LabelSchema("multilabel", ("BE", "cancer"), mask_encoding="per_class_files")
    assert multi.foreground == ("BE", "cancer") and multi.outputs_ok(2) and not multi.outputs_ok(3)
    assert LabelSchema.from_mapping(multi.to_config()) == multi


def test_group_split_keeps_every_patient_on_one_side():
    ids = [f"uwmgi/case{c}_day{d}_slice_{s:04d}" for c in range(10) for d in range(2) for s in range(c + 1)]
    parts = group_split(ids, lambda i: slice_group(i.split("/")[1]), (0.6, 0.2, 0.2), seed=1)
    assert sorted(sum(parts, [])) == sorted(ids)
    cases = [{slice_group(i.split("/")[1]) for i in p} for p in parts]
    assert not (cases[0] & cases[1] or cases[0] & cases[2] or cases[1] & cases[2])
    assert all(parts) and abs(len(parts[0]) / len(ids) - 0.6) < 0.2
    assert parts == group_split(ids, lambda i: slice_group(i.split("/")[1]), (0.6, 0.2, 0.2), seed=1)
    with pytest.raises(ValueError, match="groups"):
        group_split(ids, ["a"], (1.0,))
    with pytest.raises(ValueError, match="fractions"):
        group_split(ids, lambda i: i, (0.0, 0.0))
