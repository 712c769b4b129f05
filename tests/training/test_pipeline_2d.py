"""End to end on a 2D phantom through the real console scripts: pretrain, fine-tune, predict, evaluate, resume."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from matplotlib.image import imread

from tests.helpers import PHANTOM_2D, assert_summary_is_the_dice_of_the_files

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

DATASET_ID = PHANTOM_2D[0]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_pretraining_writes_denoiser_checkpoint_progress_and_samples(nnunet, pretrained_2d):
    checkpoint = _load(pretrained_2d / "checkpoint_final.pth")
    meta = checkpoint["ddpm"]
    assert meta["configuration"] == "2d" and meta["plans_name"] == "nnUNetPlans"
    assert meta["num_input_channels"] == 3 and meta["patch_size"] == nnunet.patch_size(PHANTOM_2D[1], "2d")
    assert meta["diffusion"] == {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}
    assert meta["network_arch_class_name"].endswith("PlainConvUNet")
    # EMA weights for fine-tuning, raw weights for resuming; after a few steps they differ
    ema, raw = checkpoint["network_weights"], checkpoint["training_network_weights"]
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    assert checkpoint["ema_updates"] == 2 * 3
    # denoising head: as many outputs as input channels
    assert ema["unet.decoder.seg_layers.2.weight"].shape[0] == 3
    # the plots at their drawn size (10 x 14 inches; 8 samples by 3 channels x (real, generated) rows of 2 x 2 inches;
    # 100 dpi), not blank
    for png, shape in (("progress.png", (1400, 1000)), ("samples.png", (1200, 1600))):
        image = imread(pretrained_2d / png)
        assert image.shape[:2] == shape and image[..., :3].std() > 0.05, png
    log = "".join(p.read_text() for p in pretrained_2d.glob("training_log_*.txt"))
    assert "val_losses" in log and "Pseudo dice" not in log
    # the denoising loss falls, on the training batches and on the held-out ones (fixed seed on CPU: deterministic)
    losses = checkpoint["logging"]
    assert len(losses["train_losses"]) == len(losses["val_losses"]) == 2
    assert losses["train_losses"][1] < losses["train_losses"][0] and losses["val_losses"][1] < losses["val_losses"][0]
    # the snapshot asked for after 3 iterations (nnUNet_ddpm_pretrain_snapshots=3): the first epoch's checkpoint, with
    # the same pretraining record as the final one, so a fine-tune takes it as -pretrained_weights
    snapshot = _load(pretrained_2d / "checkpoint_iteration3.pth")
    assert snapshot["current_epoch"] == 1 and snapshot["ema_updates"] == 3 and snapshot["ddpm"] == meta
    assert any(not torch.equal(snapshot["network_weights"][k], ema[k]) for k in ema)
    assert sorted(p.name for p in pretrained_2d.glob("checkpoint_iteration*.pth")) == ["checkpoint_iteration3.pth"]


def test_pretraining_never_reads_labels(nnunet, pretrained_2d, tmp_path):
    """Same images, labels replaced by random ones: bit-identical pretrained weights on CPU with a fixed seed.

    The random labels stay inside the image's nonzero region: outside it nnU-Net's preprocessing (not the trainer)
    uses the labels to build the normalisation mask.
    """
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    source = nnunet.raw / PHANTOM_2D[1]
    target = write_phantom_dataset(str(nnunet.raw), 992, "PhantomRandomLabels", num_cases=0, size=(40, 40),
                                   num_channels=3)
    shutil.copytree(source / "imagesTr", f"{target}/imagesTr", dirs_exist_ok=True)
    shutil.copy(source / "dataset.json", f"{target}/dataset.json")
    rng = np.random.default_rng(1)
    changed = 0
    for label_file in sorted((source / "labelsTr").glob("*.nii.gz")):
        labels = sitk.ReadImage(str(label_file))
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file).replace("labelsTr", "imagesTr")
                                                      .replace(".nii.gz", "_0000.nii.gz")))
        random_labels = np.where(image != 0, rng.integers(0, 4, image.shape), 0).astype(np.uint8)
        changed += int((random_labels != sitk.GetArrayFromImage(labels)).sum())
        out = sitk.GetImageFromArray(random_labels)
        out.CopyInformation(labels)
        sitk.WriteImage(out, f"{target}/labelsTr/{label_file.name}")
    assert changed > 1000
    nnunet.plan_and_preprocess(992, "2d")
    nnunet.train(992, "2d", "all", "nnUNetTrainerDDPMPretrain_demo")
    other = nnunet.trainer_folder("Dataset992_PhantomRandomLabels", "nnUNetTrainerDDPMPretrain_demo", "2d", "all")
    a = _load(pretrained_2d / "checkpoint_final.pth")
    b = _load(other / "checkpoint_final.pth")
    from nnunet_ddpm.networks.time_conditioned_unet import PRETRAINING_METADATA_KEY, decode_pretraining_metadata
    for key in ("network_weights", "training_network_weights"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            if k == PRETRAINING_METADATA_KEY and key == "network_weights":  # the EMA weights carry the description
                described = [decode_pretraining_metadata(c[key][k]) for c in (a, b)]  # it names the dataset
                assert described[0] | {"dataset_name": None} == described[1] | {"dataset_name": None}
                assert described[1]["dataset_name"] == "Dataset992_PhantomRandomLabels"
                continue
            assert torch.equal(a[key][k], b[key][k]), f"{key}/{k} differs"


def test_finetune_predict_evaluate_and_determinism(nnunet, pretrained_2d, tmp_path):
    result = nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainerDDPMFinetune_demo", validate=True)
    assert "Initialised from the DDPM pretraining checkpoint" in result.output
    folder = nnunet.trainer_folder(PHANTOM_2D[1], "nnUNetTrainerDDPMFinetune_demo", "2d", 0)
    checkpoint = _load(folder / "checkpoint_final.pth")
    assert checkpoint["ddpm_pretraining"]["checkpoint"] == str(pretrained_2d / "checkpoint_final.pth")
    assert json.loads((folder / "ddpm_pretraining.json").read_text()) == checkpoint["ddpm_pretraining"]
    assert checkpoint["network_weights"]["unet.decoder.seg_layers.2.weight"].shape[0] == 4  # background + 3 labels
    labels = json.loads((folder.parent / "dataset.json").read_text())["labels"]
    assert_summary_is_the_dice_of_the_files(folder / "validation",
                                            nnunet.preprocessed / PHANTOM_2D[1] / "gt_segmentations", labels)

    images = nnunet.raw / PHANTOM_2D[1] / "imagesTr"
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        nnunet.run("nnUNetv2_predict", "-i", images, "-o", out, "-d", DATASET_ID, "-c", "2d", "-f", 0,
                   "-tr", "nnUNetTrainerDDPMFinetune_demo", "-device", "cpu", "-npp", "1", "-nps", "1")
        outputs.append(out)
    cases = sorted(p.name for p in outputs[0].glob("*.nii.gz"))
    assert len(cases) == 8
    for case in cases:
        first = sitk.ReadImage(str(outputs[0] / case))
        second = sitk.ReadImage(str(outputs[1] / case))
        assert np.array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second)), case
        reference = sitk.ReadImage(str(images / case.replace(".nii.gz", "_0000.nii.gz")))
        assert first.GetSize() == reference.GetSize() and first.GetSpacing() == reference.GetSpacing()

    nnunet.run("nnUNetv2_evaluate_folder", nnunet.raw / PHANTOM_2D[1] / "labelsTr", outputs[0],
               "-djfile", folder.parent / "dataset.json", "-pfile", folder.parent / "plans.json", training=False)
    summary = json.loads((outputs[0] / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2", "3"}
    # six iterations of fine-tuning cannot be expected to segment; the evaluation must equal Dice computed by hand
    for label in (1, 2, 3):
        dice = []
        for case in cases:
            p, r = (sitk.GetArrayFromImage(sitk.ReadImage(str(f))) == label
                    for f in (outputs[0] / case, nnunet.raw / PHANTOM_2D[1] / "labelsTr" / case))
            dice.append(2 * (p & r).sum() / (p.sum() + r.sum()) if p.any() or r.any() else np.nan)
        assert summary["mean"][str(label)]["Dice"] == pytest.approx(np.nanmean(dice), nan_ok=True)


def test_frozen_encoder_keeps_pretrained_encoder(nnunet, pretrained_2d):
    nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainerDDPMFinetuneFrozenEncoder_demo")
    folder = nnunet.trainer_folder(PHANTOM_2D[1], "nnUNetTrainerDDPMFinetuneFrozenEncoder_demo", "2d", 0)
    tuned = _load(folder / "checkpoint_final.pth")["network_weights"]
    pretrained = _load(pretrained_2d / "checkpoint_final.pth")["network_weights"]
    frozen = [k for k in tuned if k.startswith(("unet.encoder.", "time_embedding."))]
    trainable = [k for k in tuned if k.startswith("unet.decoder.stages.")]
    assert frozen and trainable
    assert all(torch.equal(tuned[k], pretrained[k]) for k in frozen)
    assert any(not torch.equal(tuned[k], pretrained[k]) for k in trainable)


def _as_interrupted_after_one_epoch(folder):
    """A finished 2-epoch run made to look interrupted after its first epoch: its final checkpoint, relabelled as the
    checkpoint_latest.pth of epoch 1 (epoch counter, logs and EMA count cut back), and no checkpoint_final.pth."""
    checkpoint = _load(folder / "checkpoint_final.pth")
    checkpoint["current_epoch"] = 1
    checkpoint["logging"] = {k: v[:1] for k, v in checkpoint["logging"].items()}
    if "ema_updates" in checkpoint:
        checkpoint["ema_updates"] = 3
    torch.save(checkpoint, folder / "checkpoint_latest.pth")
    (folder / "checkpoint_final.pth").unlink()


def test_continue_training_for_both_trainers(nnunet, pretrained_2d):
    """--c on an interrupted run, with the same demo budget (another is refused): trains only the missing epoch,
    from the saved state.

    The pretraining to resume is a separate one (fold 0) so that the shared fold-all pretraining stays as it is.
    """
    nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainerDDPMPretrain_demo")
    resumed = nnunet.trainer_folder(PHANTOM_2D[1], "nnUNetTrainerDDPMPretrain_demo", "2d", 0)
    _as_interrupted_after_one_epoch(resumed)
    result = nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainerDDPMPretrain_demo", "--c")
    assert "Epoch 1" in result.output and "Epoch 0\n" not in result.output
    checkpoint = _load(resumed / "checkpoint_final.pth")
    assert checkpoint["current_epoch"] == 2 and checkpoint["ema_updates"] == 2 * 3
    assert len(checkpoint["logging"]["val_losses"]) == 2

    nnunet.train(DATASET_ID, "2d", 1, "nnUNetTrainerDDPMFinetune_demo")
    folder = nnunet.trainer_folder(PHANTOM_2D[1], "nnUNetTrainerDDPMFinetune_demo", "2d", 1)
    _as_interrupted_after_one_epoch(folder)
    result = nnunet.train(DATASET_ID, "2d", 1, "nnUNetTrainerDDPMFinetune_demo", "--c")
    assert "Initialised from the DDPM pretraining checkpoint" not in result.output
    assert "Epoch 1" in result.output and "Epoch 0\n" not in result.output
    checkpoint = _load(folder / "checkpoint_final.pth")
    assert checkpoint["current_epoch"] == 2
    assert checkpoint["ddpm_pretraining"]["checkpoint"] == str(pretrained_2d / "checkpoint_final.pth")
