"""The real-scan path: the four BraTS 2015 sample patients converted by ``nnUNetv2_ddpm_convert_brats`` into a 3D
nnU-Net raw dataset, then sliced with the paper's rule. Skipped when ../shared/data/brats2015_deepmedic_sample is
absent."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ddpm.dataset_conversion.brats import convert_brats
from nnunet_ddpm.dataset_conversion.raw_dataset import DatasetConversionError
from nnunet_ddpm.dataset_conversion.slice_dataset import slice_dataset
from nnunet_ddpm.dataset_conversion.slice_rules import PAPER_SLICES
from tests.helpers import REAL_SAMPLE

pytestmark = pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason=f"real BraTS sample not found at {REAL_SAMPLE}")


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _convert(raw, dataset_id):
    """The sample as documentation/datasets.md converts it: FLAIR and T1c, BraTS regions."""
    return convert_brats([str(REAL_SAMPLE)], str(raw), dataset_id, "BraTS2015Sample", channels=["flair", "t1ce"],
                         progress=False)["folder"]


def test_real_sample_converted_then_sliced_like_the_paper(tmp_path):
    raw = tmp_path / "raw"
    source = _convert(raw, 985)
    patients = sorted(p.name for p in REAL_SAMPLE.iterdir() if p.is_dir())
    assert sorted(p.name for p in (raw / "Dataset985_BraTS2015Sample" / "labelsTr").iterdir()) == \
        [f"{p}.nii.gz" for p in patients]
    flair = _array(f"{source}/imagesTr/{patients[0]}_0000.nii.gz")
    mask = _array(REAL_SAMPLE / patients[0] / "brainmask.nii.gz") > 0
    assert flair.shape == (155, 240, 240) and np.all(flair[~mask] == 0) and np.any(flair[mask] != 0)

    summary = slice_dataset(source, str(raw), 986, "BraTS2015Slices", size=(48, 48), test_patients=[patients[-1]],
                            progress=False)
    folder = raw / "Dataset986_BraTS2015Slices"
    training = sorted(f.name[:-len(".nii.gz")] for f in (folder / "labelsTr").iterdir())
    assert training == [f"{p}_s{s:03d}" for p in patients[:-1] for s in PAPER_SLICES]
    assert sorted(f.name for f in (folder / "labelsTs").iterdir()) == \
        [f"{patients[-1]}_s{s:03d}.nii.gz" for s in PAPER_SLICES]
    assert json.loads((folder / "case_groups.json").read_text()) == {c: c.split("_s")[0] for c in training}
    assert summary["training"]["cases"] == 21 and summary["training"]["patients"] == 3
    assert summary["test"]["patients"] == 1
    assert 0 < summary["training"]["labels"]["enhancing tumor"]["pixel_fraction"] < \
        summary["training"]["labels"]["tumor core"]["pixel_fraction"] < \
        summary["training"]["labels"]["whole tumor"]["pixel_fraction"] < 0.5

    # the importer's labels (BraTS 2015's 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing as 2, 1, 2, 3) on the
    # full-size volume, then nearest-neighbour slices: those values only, and the tumour keeps its share of the slice
    original = _array(REAL_SAMPLE / patients[0] / "OTMultiClass.nii.gz")
    assert np.array_equal(_array(f"{source}/labelsTr/{patients[0]}.nii.gz"),
                          np.array([0, 2, 1, 2, 3], np.uint8)[original.astype(int)])
    name = f"{patients[0]}_s085"
    labels = _array(folder / "labelsTr" / f"{name}.nii.gz")
    assert labels.shape == (1, 48, 48) and set(np.unique(labels)) <= {0, 1, 2, 3}
    assert (labels > 0).mean() == pytest.approx((original[85] > 0).mean(), rel=0.25)
    image = sitk.ReadImage(str(folder / "imagesTr" / f"{name}_0001.nii.gz"))
    assert image.GetSpacing() == pytest.approx((5.0, 5.0, 999.0))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "Flair", "1": "T1ce"}
    assert dataset_json["labels"]["tumor core"] == [2, 3] and dataset_json["regions_class_order"] == [1, 2, 3]

    with pytest.raises(DatasetConversionError, match="no known BraTS layout"):
        convert_brats([str(tmp_path)], str(raw), 987, "X", channels=["flair", "t1ce"], progress=False)
    assert not list(raw.glob("Dataset987*"))
