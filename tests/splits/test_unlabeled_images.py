"""Images without labels: preprocessed with the dataset's plans and used by the DDPM pretraining only."""
import json
import shutil

import pytest
from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

DATASET_ID, DATASET_NAME = 996, "Dataset996_PhantomUnlabeled"


def test_unlabeled_images_join_pretraining_and_bad_folders_are_refused(nnunet, tmp_path):
    folder = write_phantom_dataset(str(nnunet.raw), DATASET_ID, "PhantomUnlabeled", num_cases=6, size=(40, 40),
                                   num_channels=2, num_test_cases=2)
    # four more phantoms, images only: written as a second dataset, their labels thrown away
    write_phantom_dataset(str(tmp_path), 1, "Extra", num_cases=4, size=(40, 40), num_channels=2, seed=7)
    unlabeled = nnunet.raw / DATASET_NAME / "imagesUnlabeled"
    unlabeled.mkdir()
    for f in sorted((tmp_path / "Dataset001_Extra" / "imagesTr").iterdir()):
        shutil.copy(f, unlabeled / f.name.replace("phantom_", "scan_"))
    nnunet.plan_and_preprocess(DATASET_ID, "2d")

    # held-out test images are refused unless asked for; a channel missing is refused
    result = nnunet.run("nnUNetv2_ddpm_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", "-i",
                        f"{folder}/imagesTs", training=False, ok=False)
    assert "holds the held-out test images" in result.output and "--allow-test-images" in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(unlabeled / "scan_000_0000.nii.gz", broken / "scan_000_0000.nii.gz")
    result = nnunet.run("nnUNetv2_ddpm_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", "-i", broken,
                        training=False, ok=False)
    assert "The dataset has 2 channels (_0000 to _0001), but 1 cases" in result.output
    (broken / "scan_000_0001.nii.gz").write_bytes(b"")
    (broken / "notes.txt").write_text("x")
    result = nnunet.run("nnUNetv2_ddpm_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", "-i", broken,
                        training=False, ok=False)
    assert "do not end in the dataset's file ending '.nii.gz'" in result.output
    preprocessed = nnunet.preprocessed / DATASET_NAME / "nnUNetPlans_2d_unlabeled"
    assert not preprocessed.exists()

    nnunet.run("nnUNetv2_ddpm_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", training=False)
    assert sorted(p.name for p in preprocessed.glob("*.b2nd") if not p.name.endswith("_seg.b2nd")) == \
        [f"scan_{i:03d}.b2nd" for i in range(4)]

    # a truncated image (SimpleITK reads it as mostly zeros) or an undecodable one is refused, naming it; the
    # previous output stays as it was and no .partial folder is left behind
    before = {p.name: p.read_bytes() for p in preprocessed.iterdir()}
    damaged = tmp_path / "damaged"
    shutil.copytree(unlabeled, damaged)
    cut = damaged / "scan_002_0001.nii.gz"
    for content in (cut.read_bytes()[:300], b"\x1f\x8b" + bytes(200)):
        cut.write_bytes(content)
        result = nnunet.run("nnUNetv2_ddpm_preprocess_unlabeled", "-d", DATASET_ID, "-c", "2d", "-i", damaged,
                            training=False, ok=False)
        assert f"{cut}" in result.output and "Traceback" not in result.output
        assert {p.name: p.read_bytes() for p in preprocessed.iterdir()} == before
        assert not list(preprocessed.parent.glob("*.partial"))

    nnunet.train(DATASET_ID, "2d", "all", "nnUNetTrainerDDPMPretrain_demo")
    output = nnunet.trainer_folder(DATASET_NAME, "nnUNetTrainerDDPMPretrain_demo", "2d", "all")
    cases = json.loads((output / "pretraining_cases.json").read_text())
    assert cases["unlabeled_images"] == [f"scan_{i:03d}" for i in range(4)]
    assert cases["training_images"] == [f"phantom_{i:03d}" for i in range(6)]  # imagesTs (006, 007) not used

    # segmentation trainers never see them: nnU-Net's split lists the labelled cases only
    nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainer_demo_2labels")
    splits = json.loads((nnunet.preprocessed / DATASET_NAME / "splits_final.json").read_text())
    assert not any(c.startswith("scan_") for fold in splits for part in fold.values() for c in part)
