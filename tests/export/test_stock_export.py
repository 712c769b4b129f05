"""DDPM weights and models in stock nnU-Net, through the real console scripts: a stock trainer starts from an
exported pretraining; an exported fine-tune model predicts what the plugin's model predicts with nnunet_ddpm hidden
from Python, also after nnU-Net's zip export and install."""
import json

import numpy as np
import pytest
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ddpm.networks import FixedTimestepUNet
from nnunet_ddpm.networks.pretrained_checkpoint import transfer_denoiser_weights
from tests.helpers import PHANTOM_2D, hidden_plugin_env

pytestmark = pytest.mark.slow
DATASET_ID, DATASET = PHANTOM_2D


def test_exported_pretraining_is_the_fixed_timestep_network_for_a_stock_trainer(nnunet, pretrained_2d, tmp_path):
    exported = tmp_path / "ddpm_weights.pth"
    result = nnunet.run("nnUNetv2_ddpm_export_weights", "-i", pretrained_2d / "checkpoint_final.pth", "-o", exported,
                        training=False)
    assert f"-tr nnUNetTrainer -p nnUNetPlans -pretrained_weights {exported}" in result.output
    # nnU-Net's own loader puts it into the stock trainer's network, which then computes the plugin's fine-tune
    # network (pretrained denoiser at timestep 50, eval mode) up to its new segmentation layers
    plans = PlansManager(str(nnunet.preprocessed / DATASET / "nnUNetPlans.json"))
    configuration = plans.get_configuration("2d")
    stock = nnUNetTrainer.build_network_architecture(plans, configuration, 3, 4, False)
    load_pretrained_weights(stock, str(exported))
    checkpoint = torch.load(pretrained_2d / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune
    plugin = nnUNetTrainerDDPMFinetune.build_network_architecture(plans, configuration, 3, 4, False)
    assert isinstance(plugin, FixedTimestepUNet) and plugin.timestep == 50
    transfer_denoiser_weights(plugin, checkpoint["network_weights"])
    plugin.unet.decoder.seg_layers.load_state_dict(stock.decoder.seg_layers.state_dict())
    x = torch.randn(2, 3, *configuration.patch_size)
    with torch.no_grad():
        assert torch.allclose(stock.eval()(x), plugin.eval()(x), atol=1e-5, rtol=1e-4)
    # and a stock trainer (nnUNetTrainer with the test budget) trains from it through nnUNetv2_train
    training = nnunet.train(DATASET_ID, "2d", 3, "nnUNetTrainer_demo", "-pretrained_weights", exported)
    assert f"Loading pretrained weights from file  {exported}" in training.output
    assert (nnunet.trainer_folder(DATASET, "nnUNetTrainer_demo", "2d", 3) / "checkpoint_final.pth").is_file()


def test_exported_model_predicts_the_same_without_the_plugin(nnunet, pretrained_2d, tmp_path):
    # the zip needs validation/, find_best_configuration's ensembles need its probabilities (--npz)
    nnunet.train(DATASET_ID, "2d", 2, "nnUNetTrainerDDPMFinetune_demo", "--npz", validate=True)
    source = nnunet.results / DATASET / "nnUNetTrainerDDPMFinetune_demo__nnUNetPlans__2d"
    exported_results = tmp_path / "stock_results"
    for stock_trainer in ("nnUNetTrainer", "nnUNetTrainer_5epochs"):  # the second: a partner for an ensemble
        result = nnunet.run("nnUNetv2_ddpm_export_model", "-i", source, "-o", exported_results, "-f", "2",
                            "-tr", stock_trainer, training=False)
        assert "folds 2" in result.output
    checkpoint = torch.load(exported_results / DATASET / "nnUNetTrainer__nnUNetPlans__2d" / "fold_2" /
                            "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert not any("time_" in k for k in checkpoint["network_weights"])

    images = nnunet.raw / DATASET / "imagesTr"
    predict = ("nnUNetv2_predict", "-i", images, "-d", DATASET_ID, "-c", "2d", "-f", 2, "-device", "cpu",
               "-npp", "1", "-nps", "1", "--save_probabilities")
    nnunet.run(*predict, "-o", tmp_path / "plugin", "-tr", "nnUNetTrainerDDPMFinetune_demo")
    hidden = hidden_plugin_env(tmp_path, exported_results)
    nnunet.run(*predict, "-o", tmp_path / "stock", "-tr", "nnUNetTrainer", extra_env=hidden)
    _assert_same_predictions(tmp_path / "plugin", tmp_path / "stock")

    # nnU-Net's zip export and install, then prediction, all without the plugin
    archive = tmp_path / "model.zip"
    nnunet.run("nnUNetv2_export_model_to_zip", "-d", DATASET_ID, "-o", archive, "-c", "2d", "-tr", "nnUNetTrainer",
               "-f", 2, "--not_strict", training=False, extra_env=hidden)
    installed = tmp_path / "installed_results"
    nnunet.run("nnUNetv2_install_pretrained_model_from_zip", archive, training=False,
               extra_env=hidden | {"nnUNet_results": str(installed)})
    nnunet.run(*predict, "-o", tmp_path / "installed", "-tr", "nnUNetTrainer",
               extra_env=hidden | {"nnUNet_results": str(installed)})
    _assert_same_predictions(tmp_path / "plugin", tmp_path / "installed")

    # nnU-Net's model selection and ensembling take the exported folds, still without the plugin: two copies of one
    # model ensemble to that model's validation Dice and segmentations
    nnunet.run("nnUNetv2_find_best_configuration", DATASET_ID, "-c", "2d", "-tr", "nnUNetTrainer",
               "nnUNetTrainer_5epochs", "-f", 2, "-np", 1, training=False, extra_env=hidden)
    information = json.loads((exported_results / DATASET / "inference_information.json").read_text())
    single, ensemble = (information["all_results"][name] for name in (
        "nnUNetTrainer__nnUNetPlans__2d",
        "ensemble___nnUNetTrainer__nnUNetPlans__2d___nnUNetTrainer_5epochs__nnUNetPlans__2d___2"))
    validation = json.loads((source / "fold_2" / "validation" / "summary.json").read_text())
    assert single == pytest.approx(validation["foreground_mean"]["Dice"]) and ensemble == pytest.approx(single)
    nnunet.run("nnUNetv2_ensemble", "-i", tmp_path / "stock", tmp_path / "installed", "-o", tmp_path / "ensemble",
               "-np", 1, "--save_npz", training=False, extra_env=hidden)
    _assert_same_predictions(tmp_path / "plugin", tmp_path / "ensemble")


def _assert_same_predictions(a, b):
    """Same segmentations; probabilities equal up to float32 rounding (the folded weights are products)."""
    import SimpleITK as sitk
    cases = sorted(p.name[:-len(".npz")] for p in a.glob("*.npz"))
    assert len(cases) == 8 and cases == sorted(p.name[:-len(".npz")] for p in b.glob("*.npz"))
    for case in cases:
        pa, pb = np.load(a / f"{case}.npz")["probabilities"], np.load(b / f"{case}.npz")["probabilities"]
        assert np.allclose(pa, pb, atol=2e-4), (case, np.abs(pa - pb).max())
        sa, sb = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / f"{case}.nii.gz"))) for f in (a, b))
        assert np.array_equal(sa, sb), case


def test_pixel_classifier_models_are_refused_with_the_reason(nnunet, tmp_path):
    from nnunet_ddpm.export.stock_weights import ExportError, export_model_folder
    folder = tmp_path / "results" / "nnUNetTrainerDDPMPixelClassifier__nnUNetPlans__2d"
    folder.mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        (folder / name).write_bytes((nnunet.preprocessed / DATASET / name.replace("plans", "nnUNetPlans")).read_bytes())
    with pytest.raises(ExportError, match="pixel classifier reads the frozen denoiser at several timesteps"):
        export_model_folder(str(folder), str(tmp_path / "out" / "nnUNetTrainer__nnUNetPlans__2d"))
