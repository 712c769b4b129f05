"""``nnUNetv2_ddpm_pretraining_readiness``: the probe's best score per pretraining snapshot, the verdict from it, and
nothing written but its own two files."""
import json

import pytest
import torch

from nnunet_ddpm.features.probe import labelled_cases, probe_checkpoint
from nnunet_ddpm.features.readiness import READINESS_FILE, READINESS_PLOT, pretraining_snapshots, verdict
from tests.helpers import PHANTOM_2D

DATASET_ID, DATASET = PHANTOM_2D
READINESS = ("nnUNetv2_ddpm_pretraining_readiness", "-d", DATASET_ID, "-c", "2d", "-f", 0, "--budget", 5,
             "-tr", "nnUNetTrainerDDPMPretrain_demo", "--timesteps", 50, 250, "--pixels-per-case", 300)


@pytest.mark.parametrize("curve, expected", [
    ([(1000, 0.30), (2000, 0.35), (4000, 0.40)], ("rising", 0.05)),  # 0.40 - 0.35 (2000 is half of 4000)
    ([(1000, 0.20), (3000, 0.395), (8000, 0.40)], ("flat", 0.005)),  # 0.40 - 0.395 (3000: the latest at most 4000)
    ([(2000, 0.40), (4000, 0.38)], ("flat", -0.02)),
    ([(3000, 0.30), (4000, 0.50)], ("unknown", None)),  # nothing at half the iterations or earlier
    ([(4000, 0.40)], ("unknown", None)),
    ([], ("unknown", None)),
])
def test_verdict_compares_the_last_snapshot_with_half_its_iterations(curve, expected):
    state, gain = verdict(curve, tolerance=0.01)
    assert state == expected[0]
    assert gain == pytest.approx(expected[1]) if expected[1] is not None else gain is None


def test_snapshots_in_training_order_with_the_final_checkpoint_read_once(tmp_path, monkeypatch):
    """The final checkpoint is read for its iterations and handed on loaded, so the probe does not read it again;
    one whose iterations a kept snapshot has already is left out."""
    for iterations in (3, 10):
        torch.save({"network_weights": {}, "ddpm": {}, "ema_updates": iterations},
                   tmp_path / f"checkpoint_iteration{iterations}.pth")
    torch.save({"network_weights": {}, "ddpm": {}, "ema_updates": 20}, tmp_path / "checkpoint_final.pth")
    loads = []
    monkeypatch.setattr(torch, "load", lambda path, *a, load=torch.load, **k: loads.append(path) or load(path, *a, **k))
    snapshots = pretraining_snapshots(str(tmp_path))
    assert [(n, p[len(str(tmp_path)) + 1:]) for n, p, _ in snapshots] == \
        [(3, "checkpoint_iteration3.pth"), (10, "checkpoint_iteration10.pth"), (20, "checkpoint_final.pth")]
    assert [c is None for _, _, c in snapshots] == [True, True, False] and snapshots[-1][2]["ema_updates"] == 20
    assert loads == [str(tmp_path / "checkpoint_final.pth")]
    torch.save({"network_weights": {}, "ddpm": {}, "ema_updates": 10}, tmp_path / "checkpoint_final.pth")
    assert [n for n, _, _ in pretraining_snapshots(str(tmp_path))] == [3, 10]


@pytest.mark.slow
def test_readiness_scores_every_snapshot_and_writes_only_its_files(nnunet, pretrained_2d):
    nnunet.run("nnUNetv2_ddpm_make_splits", "-d", DATASET_ID, "--overwrite", training=False)
    before = {p.name for p in pretrained_2d.iterdir()}
    result = nnunet.run(*READINESS, training=False)
    assert {p.name for p in pretrained_2d.iterdir()} - before <= {READINESS_FILE, READINESS_PLOT}
    assert (pretrained_2d / READINESS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((pretrained_2d / READINESS_FILE).read_text())
    final_iterations = torch.load(pretrained_2d / "checkpoint_final.pth", map_location="cpu",
                                  weights_only=False)["ema_updates"]
    assert [(r["iterations"], r["checkpoint"]) for r in record["snapshots"]] == \
        [(3, "checkpoint_iteration3.pth"), (final_iterations, "checkpoint_final.pth")]
    assert record["budget"] == 5 and len(record["cases"]) == 5
    # each row is the mean and the best (stage, timestep) of the probe of that checkpoint, recomputed here
    import os
    os.environ.update(nnUNet_preprocessed=str(nnunet.preprocessed), nnUNet_raw=str(nnunet.raw),
                      nnUNet_results=str(nnunet.results))
    _, preprocessed, _, configuration_manager, cases = labelled_cases(DATASET_ID, "2d", 0, 5)
    assert cases == record["cases"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the console script ran: the same order of floating-point sums
    try:
        scores, num_stages, _, _ = probe_checkpoint(str(pretrained_2d / "checkpoint_iteration3.pth"), preprocessed,
                                                    configuration_manager, cases, (50, 250), 300, progress=False)
    finally:
        torch.set_num_threads(threads)
    (stage, timestep), best = max(scores.items(), key=lambda item: item[1])
    first = record["snapshots"][0]
    assert (first["best_probe_dice"], first["best_stage"], first["best_timestep"]) == \
        (best, stage - num_stages, timestep)
    assert first["mean_probe_dice"] == pytest.approx(sum(scores.values()) / len(scores), abs=1e-12)
    expected_state, expected_gain = verdict([(r["iterations"], r["mean_probe_dice"]) for r in record["snapshots"]])
    assert (record["verdict"], record["gain"]) == (expected_state, expected_gain)
    assert f"| 3 | checkpoint_iteration3.pth | {first['mean_probe_dice']:.3f} | {best:.3f} |" in result.output
    assert {"rising": "Still rising", "flat": "Flat", "unknown": "Not enough snapshots"}[record["verdict"]] \
        in result.output


@pytest.mark.slow
def test_readiness_without_a_pretraining_says_how_to_keep_snapshots(nnunet, phantom_2d):
    nnunet.run("nnUNetv2_ddpm_make_splits", "-d", DATASET_ID, "--overwrite", training=False)
    result = nnunet.run(*READINESS[:9], "-tr", "nnUNetTrainerDDPMPretrain_minSNR5", ok=False, training=False)
    assert result.output.strip().splitlines()[-1].startswith(
        "nnUNetv2_ddpm_pretraining_readiness: No pretraining snapshot in ")
    assert f"nnUNet_ddpm_pretrain_snapshots=2000,4000 nnUNetv2_train {DATASET} 2d all " \
           "-tr nnUNetTrainerDDPMPretrain_minSNR5" in result.output
