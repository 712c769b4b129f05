"""``nnUNetv2_ddpm_convert_brats`` on generated stand-ins of the BraTS layouts (2018-2021, 2023, the 2015 DeepMedic
sample), then the slicer with unlabeled slices: label values, channel order, unlabeled cases, refusals."""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ddpm.dataset_conversion.brats import convert_brats
from nnunet_ddpm.dataset_conversion.raw_dataset import DatasetConversionError
from nnunet_ddpm.dataset_conversion.slice_dataset import slice_dataset
from nnunet_ddpm.dataset_conversion.slice_rules import SliceRule

SHAPE = (12, 16, 16)  # (slices, rows, columns)


def _write(array, path: Path, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def _channel(index: int, case_seed: int) -> np.ndarray:
    """A distinct constant per channel and case inside a 'head' (slices 2..9), zero outside."""
    volume = np.zeros(SHAPE, np.float32)
    volume[2:10, 2:14, 2:14] = 10 * case_seed + index + 1
    return volume


def _segmentation(values) -> np.ndarray:
    """One block per label value, in slices 4..7."""
    seg = np.zeros(SHAPE, np.float32)  # BraTS 2018 stores its labels as floats
    for k, v in enumerate(values):
        seg[4:8, 3 + 2 * k:5 + 2 * k, 3:6] = v
    return seg


def _brats2018_case(root: Path, name: str, seed: int, labelled: bool = True):
    folder = root / name
    folder.mkdir(parents=True)
    for index, channel in enumerate(("t1", "t1ce", "t2", "flair")):
        _write(_channel(index, seed), folder / f"{name}_{channel}.nii.gz")
    if labelled:
        _write(_segmentation((1, 2, 4)), folder / f"{name}_seg.nii.gz")


def _brats2023_case(root: Path, name: str, seed: int):
    folder = root / name
    folder.mkdir(parents=True)
    for index, channel in enumerate(("t1n", "t1c", "t2w", "t2f")):
        _write(_channel(index, seed), folder / f"{name}-{channel}.nii.gz")
    _write(_segmentation((1, 2, 3)).astype(np.uint8), folder / f"{name}-seg.nii.gz")


def _deepmedic_case(root: Path, name: str, seed: int):
    folder = root / name
    folder.mkdir(parents=True)
    mask = (_channel(0, 1) > 0).astype(np.uint8)
    for index, file in ((3, "Flair_subtrMeanDivStd"), (1, "T1c_subtrMeanDivStd")):
        _write(np.where(mask > 0, _channel(index, seed), -1.5).astype(np.float32), folder / f"{file}.nii.gz")
    _write(mask, folder / "brainmask.nii.gz")
    _write(_segmentation((1, 2, 3, 4)).astype(np.uint8), folder / "OTMultiClass.nii.gz")


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture()
def downloads(tmp_path):
    brats18, brats23, deepmedic = tmp_path / "brats18", tmp_path / "brats23", tmp_path / "deepmedic"
    for i in range(3):
        _brats2018_case(brats18, f"Brats18_TCIA_{i}", seed=i)
    _brats2018_case(brats18, "Brats18_NoSeg", seed=7, labelled=False)
    _brats2023_case(brats23, "BraTS-GLI-00001-000", seed=4)
    _deepmedic_case(deepmedic, "brats_2013_pat0001_1", seed=5)
    return brats18, brats23, deepmedic


def test_every_layout_becomes_nnunet_brats_labels_and_channels(downloads, tmp_path):
    brats18, brats23, deepmedic = downloads
    result = convert_brats([brats18, brats23], str(tmp_path / "raw"), 700, "BraTSAll", progress=False)
    folder = Path(result["folder"])
    assert (result["labelled"], result["unlabeled"]) == (4, 1)
    assert result["layouts"] == ["BraTS 2018-2021", "BraTS 2023"]
    # labels: nnU-Net's Dataset137 convention, 1 oedema (BraTS 2), 2 necrosis (BraTS 1), 3 enhancing (BraTS 4 / 3)
    for case in ("Brats18_TCIA_0", "BraTS-GLI-00001-000"):
        seg = _array(folder / "labelsTr" / f"{case}.nii.gz")
        assert seg.dtype == np.uint8
        assert seg[5, 3, 4] == 2 and seg[5, 5, 4] == 1 and seg[5, 7, 4] == 3
        assert sorted(np.unique(seg).tolist()) == [0, 1, 2, 3]
    # channels in nnU-Net's order T1, T1ce, T2, FLAIR: the stand-ins hold 10 * seed + index + 1
    for c in range(4):
        assert _array(folder / "imagesTr" / f"Brats18_TCIA_2_{c:04d}.nii.gz").max() == 21 + c
        assert _array(folder / "imagesTr" / f"BraTS-GLI-00001-000_{c:04d}.nii.gz").max() == 41 + c
    # the case without a segmentation is an unlabeled pretraining image, nowhere in imagesTr
    assert sorted(p.name for p in (folder / "imagesUnlabeled").iterdir()) == \
        [f"Brats18_NoSeg_{c:04d}.nii.gz" for c in range(4)]
    assert not list((folder / "imagesTr").glob("Brats18_NoSeg*"))
    import json
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    assert dataset["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                 "enhancing tumor": [3]}
    assert dataset["regions_class_order"] == [1, 2, 3] and dataset["numTraining"] == 4


def test_deepmedic_sample_merged_with_a_channel_subset(downloads, tmp_path):
    brats18, _, deepmedic = downloads
    result = convert_brats([brats18, deepmedic], str(tmp_path / "raw"), 701, "Merged", channels=["flair", "t1ce"],
                           exclude=["Brats18_NoSeg"], progress=False)
    folder = Path(result["folder"])
    assert (result["labelled"], result["unlabeled"]) == (4, 0) and not (folder / "imagesUnlabeled").exists()
    flair = _array(folder / "imagesTr" / "brats_2013_pat0001_1_0000.nii.gz")
    assert flair.max() == 54 and flair.min() == 0  # FLAIR first; -1.5 outside the brain mask became 0
    assert _array(folder / "imagesTr" / "brats_2013_pat0001_1_0001.nii.gz").max() == 52  # T1c
    assert _array(folder / "imagesTr" / "Brats18_TCIA_1_0000.nii.gz").max() == 14  # BraTS 2018 FLAIR
    seg = _array(folder / "labelsTr" / "brats_2013_pat0001_1.nii.gz")
    # 2015: 1 necrosis -> 2, 2 oedema -> 1, 3 non-enhancing -> 2, 4 enhancing -> 3
    assert [seg[5, 3 + 2 * k, 4] for k in range(4)] == [2, 1, 2, 3]


def test_refusals_before_writing(downloads, tmp_path):
    brats18, brats23, deepmedic = downloads
    raw = tmp_path / "raw"
    with pytest.raises(DatasetConversionError, match=r"brats_2013_pat0001_1: the BraTS 2015 DeepMedic sample "
                                                     r"layout has no t1, t2"):
        convert_brats([deepmedic], str(raw), 702, "X", progress=False)
    with pytest.raises(DatasetConversionError, match=r"case Brats18_TCIA_0 is in .* pass --exclude Brats18_TCIA_0"):
        convert_brats([brats18, brats18], str(raw), 702, "X", progress=False)
    (brats23 / "notes").mkdir()
    with pytest.raises(DatasetConversionError, match=r"notes: no known BraTS layout"):
        convert_brats([brats23], str(raw), 702, "X", progress=False)
    with pytest.raises(DatasetConversionError, match=r"--exclude names no case folder: \['nobody'\]"):
        convert_brats([brats18], str(raw), 702, "X", exclude=["nobody"], progress=False)
    with pytest.raises(DatasetConversionError, match=r"--channels must name distinct channels"):
        convert_brats([brats18], str(raw), 702, "X", channels=["flair", "dwi"], progress=False)
    _write(_segmentation((1, 5)), brats18 / "Brats18_TCIA_0" / "Brats18_TCIA_0_seg.nii.gz")
    with pytest.raises(DatasetConversionError, match=r"Brats18_TCIA_0_seg.nii.gz holds label values \[5.0\] that are "
                                                     r"not declared \(allowed: \[0, 1, 2, 4\]\)"):
        convert_brats([brats18], str(raw), 702, "X", exclude=["Brats18_NoSeg"], progress=False)
    assert not raw.exists() or not list(raw.iterdir())  # nothing written, no .partial folder left
    flair = brats18 / "Brats18_TCIA_1" / "Brats18_TCIA_1_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:-40])  # a download cut short: SimpleITK would read it without an error
    with pytest.raises(DatasetConversionError, match=r"(?s)cannot be used; nothing was written.*Brats18_TCIA_1_flair.nii.gz is truncated"):
        convert_brats([brats18], str(raw), 702, "X", exclude=["Brats18_TCIA_0", "Brats18_NoSeg"], progress=False)
    assert not raw.exists() or not list(raw.iterdir())


def test_slicer_writes_other_slices_as_unlabeled_images(downloads, tmp_path):
    brats18, _, _ = downloads
    source = convert_brats([brats18], str(tmp_path / "raw"), 703, "Source", channels=["flair", "t1ce"],
                           progress=False)["folder"]
    summary = slice_dataset(source, str(tmp_path / "raw"), 704, "Slices", rule=SliceRule("indices", indices=(5, 6)),
                            size=(8, 8), test_patients=["Brats18_TCIA_2"], progress=False, unlabeled_step=2)
    folder = Path(summary["folder"])
    # training patients: slices 0, 2, ..., 10 with content (the head is slices 2..9) except the labelled 5 and 6;
    # the unlabeled volume gives every content slice of the step; the test patient gives none
    slices = {"Brats18_NoSeg": (2, 4, 6, 8), "Brats18_TCIA_0": (2, 4, 8), "Brats18_TCIA_1": (2, 4, 8)}
    expected = [f"{case}_s{i:03d}_{c:04d}.nii.gz" for case, indices in slices.items() for i in indices
                for c in range(2)]
    assert sorted(p.name for p in (folder / "imagesUnlabeled").iterdir()) == expected
    assert summary["unlabeled_images"] == 10
    assert _array(folder / "imagesUnlabeled" / "Brats18_TCIA_1_s004_0000.nii.gz").shape == (1, 8, 8)
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == \
        ["Brats18_TCIA_0_s005.nii.gz", "Brats18_TCIA_0_s006.nii.gz", "Brats18_TCIA_1_s005.nii.gz",
         "Brats18_TCIA_1_s006.nii.gz"]
    # transductive: the test patient's slices of the step too, its test slice 6 among them
    transductive = slice_dataset(source, str(tmp_path / "raw"), 705, "Transductive",
                                 rule=SliceRule("indices", indices=(5, 6)), size=(8, 8),
                                 test_patients=["Brats18_TCIA_2"], progress=False, unlabeled_step=2,
                                 unlabeled_test_patients=True)
    slices["Brats18_TCIA_2"] = (2, 4, 6, 8)
    assert sorted(p.name for p in (Path(transductive["folder"]) / "imagesUnlabeled").iterdir()) == sorted(
        f"{case}_s{i:03d}_{c:04d}.nii.gz" for case, indices in slices.items() for i in indices for c in range(2))
    assert sorted(p.name for p in (Path(transductive["folder"]) / "imagesTs").iterdir()) == \
        [f"Brats18_TCIA_2_s00{i}_000{c}.nii.gz" for i in (5, 6) for c in range(2)]
    with pytest.raises(DatasetConversionError, match="unlabeled_test_patients needs unlabeled_step"):
        slice_dataset(source, str(tmp_path / "raw"), 706, "X", unlabeled_test_patients=True, progress=False)
