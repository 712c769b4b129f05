"""``nnUNetv2_ddpm_probe_features`` on the 2D phantom's pretraining: the choice reads only the fold's labelled training
cases, lands beside the pretraining, and the pixel classifier trained through nnUNetv2_train uses it."""
import json
import shutil

import numpy as np
import pytest
import torch

from nnunet_ddpm.features.probe import PROBE_FOLDER, choice_file, choose_features, cluster_picture, probe_features
from tests.helpers import PHANTOM_2D

pytestmark = pytest.mark.slow
DATASET_ID, DATASET = PHANTOM_2D
CHOICE = choice_file(5)  # pixel_features_5labels.json: the _5labels trainers' choice
PROBE = ("nnUNetv2_ddpm_probe_features", "-d", DATASET_ID, "-c", "2d", "-f", 0, "--budget", 5,
         "-tr", "nnUNetTrainerDDPMPretrain_demo", "--timesteps", 50,
         250, "--max-stages", 2, "--max-timesteps", 1, "--pixels-per-case", 300, "--picture-cases", 1)


@pytest.fixture(scope="module")
def probed(nnunet, pretrained_2d):
    """The probe's choice beside the shared pretraining, removed afterwards: other test files on this worker train
    the pixel classifier from the same pretraining with its built-in features."""
    nnunet.run("nnUNetv2_ddpm_make_splits", "-d", DATASET_ID, "--overwrite", training=False)
    result = nnunet.run(*PROBE, training=False)
    yield json.loads((pretrained_2d / CHOICE).read_text()), result.output
    (pretrained_2d / CHOICE).unlink()
    shutil.rmtree(pretrained_2d / PROBE_FOLDER)


def test_probe_writes_scores_pictures_and_a_choice(probed, pretrained_2d):
    record, output = probed
    assert len(record["stages"]) == 2 and len(record["timesteps"]) == 1 and record["timesteps"][0] in (50, 250)
    assert record["budget"] == 5 and len(record["cases"]) == 5
    assert record["file"] == str(pretrained_2d / CHOICE) and not (pretrained_2d / choice_file()).exists()
    num_stages = len({key.split(",")[0] for key in record["scores"]})
    assert len(record["scores"]) == 2 * num_stages  # every stage at both timesteps
    assert all(-num_stages <= s < 0 for s in record["stages"])
    # the choice follows from the scores: the best stages by their mean over timesteps
    scores = {(int(k.split(",")[0]), int(k.split(",")[1])): v for k, v in record["scores"].items()}
    assert choose_features(scores, 2, 1) == {"stages": record["stages"], "timesteps": record["timesteps"]}
    rows = (pretrained_2d / PROBE_FOLDER / "scores.csv").read_text().splitlines()
    assert rows[0] == "stage,stage_from_end,timestep,probe_dice" and len(rows) == 1 + 2 * num_stages
    assert f"Chosen: decoder stages {record['stages']} at timesteps {record['timesteps']}" in output
    assert len(list((pretrained_2d / PROBE_FOLDER).glob("clusters_*.png"))) == 1


def test_probe_never_reads_held_out_labels(probed, nnunet, pretrained_2d, tmp_path):
    """Every case outside the 5 labelled ones gets random labels in a copy of the dataset: same scores, same choice."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    record, _ = probed
    source = nnunet.preprocessed / DATASET
    poisoned = nnunet.preprocessed / "Dataset977_PhantomPoisoned"
    shutil.copytree(source, poisoned)
    folder = poisoned / "nnUNetPlans_2d"
    dataset = infer_dataset_class(str(folder))(str(folder))
    rng = np.random.default_rng(0)
    held_out = [c for c in dataset.identifiers if c not in record["cases"]]
    assert held_out
    for case in held_out:
        data, seg, _, properties = dataset.load_case(case)
        data, shape = np.array(data), np.asarray(seg).shape
        del seg
        for stored in folder.glob(f"{case}*.b2nd"):
            stored.unlink()
        dataset.save_case(data, rng.integers(0, 4, shape).astype(np.int8), properties, str(folder / case))
    plans = json.loads((poisoned / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = "Dataset977_PhantomPoisoned"
    (poisoned / "nnUNetPlans.json").write_text(json.dumps(plans))
    checkpoint = tmp_path / "checkpoint_final.pth"
    shutil.copy(pretrained_2d / "checkpoint_final.pth", checkpoint)
    import os
    os.environ.update(nnUNet_preprocessed=str(nnunet.preprocessed), nnUNet_raw=str(nnunet.raw),
                      nnUNet_results=str(nnunet.results))
    (nnunet.raw / "Dataset977_PhantomPoisoned").mkdir(exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the console script ran (OMP_NUM_THREADS=1): the same order of floating-point sums
    try:
        again = probe_features(977, configuration="2d", fold=0, budget=5, checkpoint=str(checkpoint),
                               timesteps=(50, 250), max_stages=2, max_timesteps=1, pixels_per_case=300,
                               picture_cases=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert again["cases"] == record["cases"]
    assert again["scores"] == record["scores"]
    assert (again["stages"], again["timesteps"]) == (record["stages"], record["timesteps"])


def test_pixel_classifier_uses_the_choice_and_warns_for_another_pretraining(probed, nnunet, pretrained_2d):
    """The choice (here with another checkpoint's digest) builds the network through nnUNetv2_train, with a warning;
    the comparison runner's test trains from a matching choice."""
    record, _ = probed
    choice = pretrained_2d / CHOICE
    original = choice.read_text()
    try:
        choice.write_text(json.dumps(dict(record, checkpoint_sha1="0" * 40)))
        result = nnunet.train(DATASET_ID, "2d", 3, "nnUNetTrainerDDPMPixelClassifier_demo_5labels")
    finally:
        choice.write_text(original)
    assert "was made for another pretraining checkpoint" in result.output
    folder = nnunet.trainer_folder(DATASET, "nnUNetTrainerDDPMPixelClassifier_demo_5labels", "2d", 3)
    plans = json.loads((folder.parent / "plans.json").read_text())["configurations"]["2d"]
    assert (plans["ddpm_pixel_features"]["stages"], plans["ddpm_pixel_features"]["timesteps"]) == \
        (record["stages"], record["timesteps"])
    debug = json.loads((folder / "debug.json").read_text())
    assert debug["feature_timesteps"] == str(tuple(record["timesteps"]))
    # the head's first layer has one convolution per chosen stage, reading that stage's channels at one timestep
    features_per_stage = plans["architecture"]["arch_kwargs"]["features_per_stage"]
    weights = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    first_layer = sorted((k, v.shape[1]) for k, v in weights.items() if ".first_layer." in k and k.endswith("weight"))
    assert [c for _, c in first_layer] == [features_per_stage[-s - 1] for s in record["stages"]]


def test_cluster_picture_grid(tmp_path):
    features = {(s, t): torch.randn(4, 12, 10) for s in (0, 1, 2) for t in (10, 50)}
    image, seg = np.random.rand(2, 12, 10), np.zeros((1, 12, 10))
    assert cluster_picture(image, seg, features, str(tmp_path / "p.png"), "x", num_clusters=3) == (3, 3)
    import matplotlib.image
    picture = matplotlib.image.imread(str(tmp_path / "p.png"))
    assert picture.ndim == 3 and picture.std() > 0


def test_a_probe_of_given_weights_is_used_by_a_pixel_classifier_given_them(nnunet, pretrained_2d, tmp_path):
    """probe -pretrained_weights CK, then nnUNetv2_train -pretrained_weights CK: the run learns only CK's weights from
    nnU-Net, finds the probe's choice for them by their content hash, builds its network with it and records it; its
    log counts decoder stages from the end, as the probe's file does."""
    from nnunet_ddpm.features.probe import indexed_choice_file
    from nnunet_ddpm.networks.pretrained_checkpoint import denoiser_sha256
    checkpoint = torch.load(pretrained_2d / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["network_weights"]["time_embedding.1.linear_1.bias"] += 0.01  # other weights than the default's
    given = tmp_path / "elsewhere" / "given.pth"
    given.parent.mkdir()
    torch.save(checkpoint, given)
    results = {"nnUNet_results": str(tmp_path / "results")}  # no default pretraining, no choice beside one
    nnunet.run("nnUNetv2_ddpm_make_splits", "-d", DATASET_ID, "--overwrite", training=False)
    probe = [a if a != 250 else 150 for a in PROBE if a not in ("-tr", "nnUNetTrainerDDPMPretrain_demo", 50)]
    nnunet.run(*probe, "-pretrained_weights", given, training=False, extra_env=results)
    record = json.loads((given.parent / CHOICE).read_text())
    assert record["timesteps"] == [150] and record["checkpoint"] == str(given)
    sha256 = denoiser_sha256(checkpoint["network_weights"])
    indexed = indexed_choice_file(results["nnUNet_results"], DATASET, sha256, 5)
    assert json.loads(open(indexed).read()) == record

    trainer = "nnUNetTrainerDDPMPixelClassifier_demo_5labels"
    result = nnunet.train(DATASET_ID, "2d", 1, trainer, "-pretrained_weights", given, extra_env=results)
    assert f"features of decoder stages {record['stages']} (counted from the end" in result.output
    folder = tmp_path / "results" / DATASET / f"{trainer}__nnUNetPlans__2d" / "fold_1"
    plans = json.loads((folder.parent / "plans.json").read_text())["configurations"]["2d"]
    assert (plans["ddpm_pixel_features"]["stages"], plans["ddpm_pixel_features"]["timesteps"]) == \
        (record["stages"], [150])
    used = json.loads((folder / "ddpm_pretraining.json").read_text())
    assert used["weights_sha256"] == sha256
    assert used["pixel_features"] == {"stages": record["stages"], "timesteps": [150], "file": indexed}
    weights = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    first_layer = [k for k in weights if ".first_layer." in k and k.endswith("weight")]
    assert len(first_layer) == len(record["stages"])
