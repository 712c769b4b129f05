"""Label budgets and grouped splits through the real nnUNetv2_train and nnUNetv2_ddpm_make_splits."""
import json

import pytest
from tests.helpers import PHANTOM_2D

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

DATASET_ID, DATASET_NAME = PHANTOM_2D


def test_baseline_and_ddpm_variants_train_on_the_same_cases(nnunet, pretrained_2d):
    folders = {}
    for trainer in ("nnUNetTrainer_demo_5labels", "nnUNetTrainerDDPMFinetune_demo_5labels"):
        result = nnunet.train(DATASET_ID, "2d", 0, trainer, validate=True)
        assert "Label budget: training on 5 of the fold's 6 training cases" in result.output
        folders[trainer] = nnunet.trainer_folder(DATASET_NAME, trainer, "2d", 0)
    chosen = [json.loads((f / "labelled_cases.json").read_text()) for f in folders.values()]
    assert chosen[0] == chosen[1]
    fold0 = json.loads((nnunet.preprocessed / DATASET_NAME / "splits_final.json").read_text())[0]
    assert len(chosen[0]["cases"]) == 5 and set(chosen[0]["cases"]) <= set(fold0["train"])
    for folder in folders.values():  # validation stays the fold's
        validated = json.loads((folder / "validation" / "summary.json").read_text())["metric_per_case"]
        assert sorted(c["reference_file"].split("/")[-1][:-7] for c in validated) == sorted(fold0["val"])

    result = nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainerDDPMFinetune_demo_10labels", ok=False)
    assert "A budget of 10 labelled cases was asked for, but fold 0 has only 6 training cases" in result.output
    assert "Epoch 0" not in result.output


def test_grouped_splits_command_and_leaking_splits(nnunet):
    from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
    dataset_id, name = 995, "Dataset995_PhantomPatients"
    write_phantom_dataset(str(nnunet.raw), dataset_id, "PhantomPatients", num_cases=12, size=(40, 40))
    nnunet.plan_and_preprocess(dataset_id, "2d")
    cases = [f"phantom_{i:03d}" for i in range(12)]
    groups = {case: f"patient{i // 2}" for i, case in enumerate(cases)}  # 6 patients, 2 slices each
    mapping = nnunet.root / "groups.json"

    mapping.write_text(json.dumps(dict(list(groups.items())[:10])))
    result = nnunet.run("nnUNetv2_ddpm_make_splits", "-d", dataset_id, "--groups", mapping, ok=False)
    assert "has no group for 2 of 12 cases" in result.output

    mapping.write_text(json.dumps(groups))
    result = nnunet.run("nnUNetv2_ddpm_make_splits", "-d", dataset_id, "--groups", mapping)
    assert "fold 4:" in result.output
    folder = nnunet.preprocessed / name
    splits = json.loads((folder / "splits_final.json").read_text())
    assert json.loads((folder / "case_groups.json").read_text()) == groups
    for fold in splits:
        assert not {groups[c] for c in fold["train"]} & {groups[c] for c in fold["val"]}
    result = nnunet.run("nnUNetv2_ddpm_make_splits", "-d", dataset_id, "--groups", mapping, ok=False)
    assert "splits_final.json exists" in result.output and "--overwrite" in result.output

    result = nnunet.run("nnUNetv2_ddpm_make_splits", "-d", dataset_id, "--group-regex", r"phantom_0(\d)\d",
                        "--overwrite", ok=False)
    assert "2 groups cannot fill 5 folds" in result.output

    # a hand-made split that separates the two slices of patient0 is refused before training
    leaking = [{"train": cases[1:], "val": cases[:1]}] + splits[1:]
    (folder / "splits_final.json").write_text(json.dumps(leaking))
    result = nnunet.train(dataset_id, "2d", 0, "nnUNetTrainer_demo_2labels", ok=False)
    assert "puts patients in two places" in result.output and "patient0" in result.output
    assert "Epoch 0" not in result.output
