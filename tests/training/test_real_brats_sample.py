"""The pipeline on real scans: a few downsampled axial slices of the four BraTS 2015 sample patients.

Skipped when ../shared/data/brats2015_deepmedic_sample is absent. Three patients train, the fourth is held out.
"""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import save_json

from tests.helpers import REAL_SAMPLE

DATASET_ID, DATASET_NAME = 994, "Dataset994_BraTS2015Sample"
SIZE, STEP = 48, 5  # 240 x 240 -> 48 x 48 by 5 x 5 block means (images) and block centres (labels)
LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}

pytestmark = [pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason=f"real BraTS sample not found at {REAL_SAMPLE}"),
              pytest.mark.slow]


def _write_slice(array, path):
    image = sitk.GetImageFromArray(array[None].astype(np.float32 if array.dtype.kind == "f" else np.uint8))
    image.SetSpacing((float(STEP), float(STEP), 999.0))
    sitk.WriteImage(image, str(path))


def write_slice_dataset(root):
    """Three axial slices per patient around the largest tumour cross-section; brain-masked, downsampled."""
    folder = root / DATASET_NAME
    patients = sorted(p for p in REAL_SAMPLE.iterdir() if p.is_dir())
    for patient_index, patient in enumerate(patients):
        part = "Ts" if patient_index == len(patients) - 1 else "Tr"
        (folder / f"images{part}").mkdir(parents=True, exist_ok=True)
        (folder / f"labels{part}").mkdir(parents=True, exist_ok=True)
        read = lambda name: sitk.GetArrayFromImage(sitk.ReadImage(str(patient / f"{name}.nii.gz")))  # noqa: E731
        mask = read("brainmask") > 0
        labels = read("OTMultiClass").astype(np.uint8)
        channels = [np.where(mask, read(n), 0) for n in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd")]
        centre = int((labels > 0).sum(axis=(1, 2)).argmax())
        for z in (centre - 6, centre, centre + 6):
            case = f"{patient.name}_z{z:03d}"
            for c, volume in enumerate(channels):
                block_means = volume[z].reshape(SIZE, STEP, SIZE, STEP).mean(axis=(1, 3))
                _write_slice(block_means, folder / f"images{part}" / f"{case}_{c:04d}.nii.gz")
            _write_slice(labels[z][STEP // 2::STEP, STEP // 2::STEP], folder / f"labels{part}" / f"{case}.nii.gz")
    save_json({"channel_names": {"0": "FLAIR", "1": "T1c"}, "labels": LABELS, "file_ending": ".nii.gz",
               "numTraining": len(list((folder / "labelsTr").iterdir()))}, str(folder / "dataset.json"))
    return folder


def test_real_brats_slices_pretrain_finetune_predict_evaluate(nnunet, tmp_path):
    folder = write_slice_dataset(nnunet.raw)
    assert len(list((folder / "labelsTr").iterdir())) == 9 and len(list((folder / "labelsTs").iterdir())) == 3
    nnunet.plan_and_preprocess(DATASET_ID, "2d")
    nnunet.train(DATASET_ID, "2d", "all", "nnUNetTrainerDDPMPretrain_demo")
    nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainerDDPMFinetune_demo")
    out = tmp_path / "pred"
    nnunet.run("nnUNetv2_predict", "-i", folder / "imagesTs", "-o", out, "-d", DATASET_ID, "-c", "2d", "-f", 0,
               "-tr", "nnUNetTrainerDDPMFinetune_demo", "-device", "cpu", "-npp", "1", "-nps", "1")
    model = nnunet.results / DATASET_NAME / "nnUNetTrainerDDPMFinetune_demo__nnUNetPlans__2d"
    nnunet.run("nnUNetv2_evaluate_folder", folder / "labelsTs", out, "-djfile", model / "dataset.json",
               "-pfile", model / "plans.json", training=False)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 3
    assert set(summary["mean"]) == {"1", "2", "3", "4"}
    prediction = sitk.ReadImage(str(out / summary["metric_per_case"][0]["prediction_file"].split("/")[-1]))
    assert prediction.GetSize() == (SIZE, SIZE, 1)
