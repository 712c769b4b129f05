"""The pixel classifier through the real console scripts: train, frozen denoiser, deterministic prediction,
uncertainty maps, errors; 2D and 3D."""
import json
import shutil

import pytest
import numpy as np
import SimpleITK as sitk
import torch

from tests.helpers import PHANTOM_2D, assert_summary_is_the_dice_of_the_files, changed_pretraining

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

DATASET_ID, DATASET_NAME = PHANTOM_2D
TRAINER = "nnUNetTrainerDDPMPixelClassifier_demo"


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_pixel_classifier_trains_only_the_head_and_predicts_deterministically(nnunet, pretrained_2d, tmp_path):
    result = nnunet.train(DATASET_ID, "2d", 0, TRAINER, validate=True)
    assert "Initialised from the DDPM pretraining checkpoint" in result.output and "frozen; features" in result.output
    assert "(3 per denoiser pass)" in result.output  # 2D: all feature timesteps in one pass
    folder = nnunet.trainer_folder(DATASET_NAME, TRAINER, "2d", 0)
    weights = _load(folder / "checkpoint_final.pth")["network_weights"]
    pretrained = _load(pretrained_2d / "checkpoint_final.pth")["network_weights"]
    # the denoiser's keys, bit-identical to the pretrained EMA tensors; the head in place of its output layers
    denoiser = {k: v for k, v in weights.items() if ".seg_layers." not in k}
    assert denoiser.keys() == {k for k in pretrained if ".seg_layers." not in k}
    assert all(torch.equal(denoiser[k], pretrained[k]) for k in denoiser)
    head = {k[len("unet.decoder.seg_layers."):]: v for k, v in weights.items() if ".seg_layers." in k}
    assert "region_based" in head
    # 5 members x 4 classes out of the last grouped 1x1 convolution
    assert head["layers.5.weight"].shape[:2] == (5 * 4, 64)
    labels = json.loads((folder.parent / "dataset.json").read_text())["labels"]
    assert_summary_is_the_dice_of_the_files(folder / "validation",
                                            nnunet.preprocessed / DATASET_NAME / "gt_segmentations", labels)

    images = tmp_path / "images"  # three cases are enough here
    images.mkdir()
    for source in sorted((nnunet.raw / DATASET_NAME / "imagesTr").glob("phantom_00[0-2]_*.nii.gz")):
        shutil.copy(source, images / source.name)
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        nnunet.run("nnUNetv2_predict", "-i", images, "-o", out, "-d", DATASET_ID, "-c", "2d", "-f", 0, "-tr",
                   TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1", "--save_probabilities")
        outputs.append(out)
    cases = sorted(p.name for p in outputs[0].glob("*.nii.gz"))
    assert len(cases) == 3
    for case in cases:
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(o / case))) for o in outputs)
        assert np.array_equal(a, b), case
        pa, pb = (np.load(o / case.replace(".nii.gz", ".npz"))["probabilities"] for o in outputs)
        assert np.array_equal(pa, pb) and np.allclose(pa.sum(0), 1, atol=1e-4)  # the ensemble's mean probability

    nnunet.run("nnUNetv2_ddpm_uncertainty", "-i", outputs[0], training=False)
    for case in cases:
        segmentation = sitk.ReadImage(str(outputs[0] / case))
        uncertainty = sitk.ReadImage(str(outputs[0] / "uncertainty" / case))
        assert uncertainty.GetSize() == segmentation.GetSize()
        assert uncertainty.GetSpacing() == segmentation.GetSpacing()
        assert uncertainty.GetOrigin() == segmentation.GetOrigin()
        p = np.load(outputs[0] / case.replace(".nii.gz", ".npz"))["probabilities"].astype(np.float64)
        entropy = -(np.clip(p, 1e-12, 1) * np.log(np.clip(p, 1e-12, 1))).sum(0) / np.log(4)
        assert np.abs(sitk.GetArrayFromImage(uncertainty).astype(float) - 100 * entropy).max() <= 0.5 + 1e-6
    # the maps live in a subfolder: nnU-Net's evaluation of the prediction folder still works
    labels = tmp_path / "labels"
    labels.mkdir()
    for case in cases:
        shutil.copy(nnunet.raw / DATASET_NAME / "labelsTr" / case, labels / case)
    nnunet.run("nnUNetv2_evaluate_folder", labels, outputs[0],
               "-djfile", folder.parent / "dataset.json", "-pfile", folder.parent / "plans.json", training=False)
    assert set(json.loads((outputs[0] / "summary.json").read_text())["mean"]) == {"1", "2", "3"}


def test_uncertainty_without_probabilities_says_what_to_run(nnunet, tmp_path):
    (tmp_path / "dataset.json").write_text("{}")
    (tmp_path / "plans.json").write_text("{}")
    result = nnunet.run("nnUNetv2_ddpm_uncertainty", "-i", tmp_path, ok=False, training=False)
    assert "--save_probabilities" in result.output
    assert not (tmp_path / "uncertainty").exists()


def test_pixel_classifier_refuses_missing_and_mismatching_pretraining(nnunet, pretrained_2d, tmp_path):
    result = nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainerDDPMPixelClassifier", ok=False)
    assert "No DDPM pretraining checkpoint found" in result.output
    assert f"nnUNetv2_train {DATASET_NAME} 2d all -tr nnUNetTrainerDDPMPretrain" in result.output
    other = changed_pretraining(pretrained_2d / "checkpoint_final.pth", tmp_path / "four_channels.pth",
                                lambda metadata: metadata.update(num_input_channels=4))
    result = nnunet.train(DATASET_ID, "2d", 1, TRAINER, "-pretrained_weights", other, ok=False)
    assert "num_input_channels: checkpoint has 4, this run needs 3" in result.output
    for trainer, fold in (("nnUNetTrainerDDPMPixelClassifier", 0), (TRAINER, 1)):
        assert "Epoch 0" not in result.output
        assert not list(nnunet.trainer_folder(DATASET_NAME, trainer, "2d", fold).glob("checkpoint_*.pth"))
