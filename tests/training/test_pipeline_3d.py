"""The same trainers (pretraining, fine-tuning, pixel classifier) on a 3D configuration (3d_fullres), and a 3D checkpoint
refused by a 2D run."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from matplotlib.image import imread

from tests.helpers import PHANTOM_2D, assert_summary_is_the_dice_of_the_files

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

DATASET_ID, DATASET_NAME = 993, "Dataset993_Phantom3D"


def test_3d_pretrain_finetune_predict(nnunet, pretrained_2d, tmp_path):
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    write_phantom_dataset(str(nnunet.raw), DATASET_ID, "Phantom3D", num_cases=5, size=(20, 24, 24), num_channels=2)
    nnunet.plan_and_preprocess(DATASET_ID, "3d_fullres")
    nnunet.train(DATASET_ID, "3d_fullres", "all", "nnUNetTrainerDDPMPretrain_demo")
    pretrained = nnunet.trainer_folder(DATASET_NAME, "nnUNetTrainerDDPMPretrain_demo", "3d_fullres", "all")
    checkpoint = torch.load(pretrained / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["ddpm"]["configuration"] == "3d_fullres" and len(checkpoint["ddpm"]["patch_size"]) == 3
    assert checkpoint["network_weights"]["unet.encoder.stages.0.0.convs.0.conv.weight"].ndim == 5
    samples = imread(pretrained / "samples.png")
    assert samples[..., :3].std() > 0.01  # an image of samples, not a blank canvas

    result = nnunet.train(DATASET_ID, "3d_fullres", 0, "nnUNetTrainerDDPMFinetune_demo")
    assert "Initialised from the DDPM pretraining checkpoint" in result.output
    images = nnunet.raw / DATASET_NAME / "imagesTr"
    nnunet.run("nnUNetv2_predict", "-i", images, "-o", tmp_path / "pred", "-d", DATASET_ID, "-c", "3d_fullres",
               "-f", 0, "-tr", "nnUNetTrainerDDPMFinetune_demo", "-device", "cpu", "-npp", "1", "-nps", "1")
    prediction = sitk.ReadImage(str(tmp_path / "pred" / "phantom_000.nii.gz"))
    assert prediction.GetSize() == (24, 24, 20)
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3}

    # the pixel classifier on 3D activations (trilinear upsampling); its final validation runs nnU-Net's 3D sliding
    # window prediction
    result = nnunet.train(DATASET_ID, "3d_fullres", 0, "nnUNetTrainerDDPMPixelClassifier_demo", validate=True)
    assert "(1 per denoiser pass)" in result.output  # 3D: one feature timestep per pass bounds the memory
    folder = nnunet.trainer_folder(DATASET_NAME, "nnUNetTrainerDDPMPixelClassifier_demo", "3d_fullres", 0)
    weights = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert weights["unet.decoder.seg_layers.first_layer.0.weight"].ndim == 5
    labels = json.loads((folder.parent / "dataset.json").read_text())["labels"]
    assert_summary_is_the_dice_of_the_files(folder / "validation",
                                            nnunet.preprocessed / DATASET_NAME / "gt_segmentations", labels)

    # a 3D pretraining checkpoint given to a 2D run: nnU-Net's loader refuses the tensor shapes before any training
    result = nnunet.train(PHANTOM_2D[0], "2d", 2, "nnUNetTrainerDDPMFinetune_demo", "-pretrained_weights",
                          pretrained / "checkpoint_final.pth", ok=False)
    assert "The pretrained model does not seem to be compatible with your network" in result.output
    assert "Epoch 0" not in result.output
