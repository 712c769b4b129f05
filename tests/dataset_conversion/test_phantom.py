"""The synthetic tumour phantom: layout, determinism, anatomy, the command, and that it is hard enough that labels
matter (a cheap per-pixel classifier trained on 2 cases is clearly worse than one trained on 20)."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tools.phantom_difficulty import measure
from nnunet_ddpm.dataset_conversion.raw_dataset import DatasetConversionError
from nnunet_ddpm.dataset_conversion.synthetic_phantom import LABELS, phantom_case, write_phantom_dataset

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

REPO = Path(__file__).resolve().parents[2]


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_labelled_test_and_unlabeled_parts_seeded_and_independent(tmp_path):
    folder = Path(write_phantom_dataset(str(tmp_path / "a"), 7, "P", num_cases=3, size=(32, 36), num_channels=4,
                                        seed=5, num_test_cases=2, num_unlabeled_cases=2))
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"phantom_00{i}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["phantom_003.nii.gz", "phantom_004.nii.gz"]
    assert sorted(p.name for p in (folder / "imagesUnlabeled").iterdir()) == \
        [f"phantom_00{i}_000{c}.nii.gz" for i in (5, 6) for c in range(4)]
    assert not (folder / "labelsUnlabeled").exists()
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "T1", "1": "T1c", "2": "FLAIR", "3": "T2"}
    assert dataset_json["labels"] == LABELS and dataset_json["numTraining"] == 3
    image = sitk.ReadImage(str(folder / "imagesTr" / "phantom_000_0002.nii.gz"))
    assert image.GetSize() == (36, 32, 1) and image.GetSpacing() == (1.0, 1.0, 999.0)

    # the same seed gives the same files; a case does not depend on how many others are written
    again = Path(write_phantom_dataset(str(tmp_path / "b"), 7, "P", num_cases=2, size=(32, 36), num_channels=4,
                                       seed=5))
    for name in ("imagesTr/phantom_001_0003.nii.gz", "labelsTr/phantom_001.nii.gz"):
        assert np.array_equal(_read(folder / name), _read(again / name))
    other = Path(write_phantom_dataset(str(tmp_path / "c"), 7, "P", num_cases=2, size=(32, 36), num_channels=4,
                                       seed=6))
    assert not np.array_equal(_read(folder / "imagesTr/phantom_001_0003.nii.gz"),
                              _read(other / "imagesTr/phantom_001_0003.nii.gz"))


def _touches(mask: np.ndarray, other: np.ndarray) -> bool:
    """Whether a voxel of ``mask`` has a face neighbour in ``other``."""
    return any(np.any(mask & np.roll(other, shift, axis)) for axis in range(mask.ndim) for shift in (1, -1))


@pytest.mark.parametrize("shape", [(64, 64), (20, 24, 24)])
def test_anatomy_tumour_inside_the_head_with_nested_regions_and_variation(shape):
    sizes, core_shares = [], []
    for i in range(12):
        images, labels = phantom_case(shape, 4, np.random.default_rng([0, i]))
        assert images.shape == (4, *shape) and images.dtype == np.float32 and labels.shape == shape
        head = images[0] != 0
        assert np.array_equal(head, (images != 0).all(0)) and head.mean() > 0.15  # air is exactly 0 in all channels
        assert (labels > 0).any() and np.all(head[labels > 0])  # a tumour, inside the head
        assert set(np.unique(labels)) <= set(LABELS.values())
        core = np.isin(labels, (LABELS["necrosis"], LABELS["enhancing"]))
        # nested voxel by voxel: oedema around the core, an enhancing rim around the necrosis
        assert not _touches(core, labels == 0)
        assert not _touches(labels == LABELS["necrosis"], np.isin(labels, (0, LABELS["edema"])))
        sizes.append((labels > 0).sum())
        core_shares.append(core.sum() / (labels > 0).sum())
    assert np.std(sizes) / np.mean(sizes) > 0.3 and np.ptp(core_shares) > 0.2  # varied size and sub-regions


def test_difficulty_two_cases_clearly_worse_than_twenty_and_no_single_threshold_suffices():
    result = measure(num_train=20, few=2, draws=3, num_test=10, size=(64, 64), seed=0)
    assert result["many"] - result["few_mean"] > 0.05, result
    assert max(result["threshold"].values()) < 0.85, result["threshold"]
    assert result["many"] > 0.6, result  # learnable at all


def test_command_writes_dataset_and_refuses_existing_target(tmp_path):
    import subprocess
    command = [sys.executable, "-m", "nnunet_ddpm.dataset_conversion.synthetic_phantom", "-d", "5", "-n", "Cmd",
               "--cases", "2", "--unlabeled", "1", "--test", "1", "--size", "12", "16", "20", "--channels", "2",
               "--regions", "--raw", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.run(command, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "Dataset005_Cmd"
    assert _read(folder / "imagesTs" / "phantom_002_0001.nii.gz").shape == (12, 16, 20)
    assert (folder / "imagesUnlabeled" / "phantom_003_0000.nii.gz").is_file()
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["regions_class_order"] == [1, 2, 3] and dataset_json["labels"]["tumor core"] == [2, 3]
    second = subprocess.run(command, env=env, capture_output=True, text=True)
    assert second.returncode != 0 and "Traceback" not in second.stderr
    assert "Dataset005_Cmd exists" in second.stderr and "--overwrite" in second.stderr
    assert len(list((folder / "labelsTr").iterdir())) == 2  # untouched
    with pytest.raises(DatasetConversionError, match="size must be 2 or 3 numbers"):
        write_phantom_dataset(str(tmp_path), 6, "Bad", size=(8,))
    assert not list(tmp_path.glob("Dataset006*"))


def test_console_scripts_declared():
    """The commands point at the main() functions these tests run with ``python -m``."""
    import importlib
    import re
    setup = (REPO / "setup.py").read_text()
    for command, module in (("nnUNetv2_ddpm_slice_dataset", "slice_dataset"),
                            ("nnUNetv2_ddpm_make_phantom", "synthetic_phantom"),
                            ("nnUNetv2_ddpm_convert_brats", "brats")):
        match = re.search(rf'"{command}=(nnunet_ddpm\.dataset_conversion\.{module}):main"', setup)
        assert match, command
        assert callable(importlib.import_module(match.group(1)).main)
