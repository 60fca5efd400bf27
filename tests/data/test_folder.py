"""ImageFolder scanning: labels, accepted files, and one clear UserError per layout problem."""

from pathlib import Path

import pytest

from rmeeto_export.data import scan_image_folder
from rmeeto_export.errors import UserError
from tests.support.images import write_layout


def test_labels_follow_sorted_class_names_and_suffixes_are_case_insensitive(tmp_path):
    layout = {split: {"zebra": ["a.JPEG", "b.png"], "ant": ["c.jpg"], "moth": ["d.Png"]} for split in ("train", "val")}
    root = write_layout(tmp_path, layout)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    splits = scan_image_folder(str(root))
    assert splits.classes == ("ant", "moth", "zebra")
    assert sorted((Path(p).name, label) for p, label in splits.train) == [("a.JPEG", 2), ("b.png", 2), ("c.jpg", 0), ("d.Png", 1)]
    assert len(splits.val) == 4


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"train": {"a": ["x.png"]}}, "no val/ folder"),
        ({"train": {"a": ["x.png"]}, "val": {}}, "no class folders"),
        ({"train": {"a": ["x.png"], "b": []}, "val": {"a": ["x.png"], "b": ["y.png"]}}, "has no images"),
        ({"train": {"a": ["x.png"], "b": ["y.png"]}, "val": {"a": ["x.png"], "c": ["y.png"]}},
         "different classes (only in train: b; only in val: c)"),
    ],
)
def test_layout_problems_are_user_errors(tmp_path, layout, message):
    root = write_layout(tmp_path, layout)
    for split in layout:
        (root / split).mkdir(exist_ok=True)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scan_image_folder(str(root))


def test_missing_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        scan_image_folder(str(tmp_path / "nowhere"))
