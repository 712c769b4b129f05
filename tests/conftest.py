"""Shared fixtures: nnU-Net folders in a temporary directory, the planned phantom, its pretraining (helpers.py holds
the helpers these build on)."""
import os
from pathlib import Path

# Two pytest workers on two cores, and every nnUNetv2_train sets torch to as many threads as there are cores: waiting
# OpenMP threads that spin take the core from the other worker's process (two trainings side by side ran several
# times slower each). Passive waiting hands the core over; set before torch is first imported here, and inherited by
# every console script the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from tests.helpers import PHANTOM_2D, NNUNetFolders  # noqa: E402


@pytest.fixture(scope="session")
def nnunet(tmp_path_factory) -> NNUNetFolders:
    return NNUNetFolders(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture(scope="session")
def phantom_2d(nnunet) -> str:
    """A planned and preprocessed 2D phantom: 8 cases of 40 x 40 pixels, 3 channels."""
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    dataset_id, name = PHANTOM_2D
    write_phantom_dataset(str(nnunet.raw), dataset_id, "Phantom", num_cases=8, size=(40, 40), num_channels=3)
    nnunet.plan_and_preprocess(dataset_id, "2d")
    return name


@pytest.fixture(scope="session")
def pretrained_2d(nnunet, phantom_2d) -> Path:
    """Folder of the finished test-budget DDPM pretraining on the 2D phantom (fold all), with a snapshot after the
    first epoch's 3 iterations (checkpoint_iteration3.pth)."""
    nnunet.train(PHANTOM_2D[0], "2d", "all", "nnUNetTrainerDDPMPretrain_demo",
                 extra_env={"nnUNet_ddpm_pretrain_snapshots": "3"})
    return nnunet.trainer_folder(phantom_2d, "nnUNetTrainerDDPMPretrain_demo", "2d", "all")


@pytest.fixture(scope="session")
def phantom_2d_test_set(nnunet, tmp_path_factory):
    """Three held-out phantom cases with labels, written outside the dataset (passed with --test-images/-labels)."""
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    root = tmp_path_factory.mktemp("heldout")
    folder = write_phantom_dataset(str(root), PHANTOM_2D[0], "Phantom", num_cases=0, size=(40, 40), num_channels=3,
                                   seed=99, num_test_cases=3)
    return f"{folder}/imagesTs", f"{folder}/labelsTs"
