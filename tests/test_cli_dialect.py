"""One option dialect, nnU-Net's: every option a command shares with nnU-Net is spelled as nnU-Net spells it (shown
in --help), and the plugin's older spelling still parses to the same value, for scripts written before."""
import pytest

from nnunet_ddpm.comparison import demo, runner
from nnunet_ddpm.features import probe
from nnunet_ddpm.patient import evaluation as patient_evaluation, segment_patient

# (command, its parser, the options it requires)
BENCHMARK = ("nnUNetv2_ddpm_benchmark", runner._parser, ["-d", "501"])
PROBE = ("nnUNetv2_ddpm_probe_features", probe._parser, ["-d", "501"])
PATIENT = ("nnUNetv2_ddpm_segment_patient", segment_patient._parser, ["-i", "a.nii.gz", "-a", "b.nii.gz", "-o", "out"])
DEMO = ("nnUNetv2_ddpm_demo", demo._parser, [])
PATIENT_DICE = ("patient.evaluation", patient_evaluation._parser, ["-p", "seg.nii.gz", "-ref", "other.nii.gz"])

SPELLINGS = [
    (BENCHMARK, "-pretrained_weights", "--pretrained-weights", ["ck.pth"], "pretrained_weights", "ck.pth"),
    (BENCHMARK, "-np", "--np", ["3"], "np", 3),
    (BENCHMARK, "-device", "--device", ["cpu"], "device", "cpu"),
    (BENCHMARK, "-pretrainer", "--pretrainer", ["nnUNetTrainerDDPMPretrain_minSNR5"], "pretrainer",
     "nnUNetTrainerDDPMPretrain_minSNR5"),
    (BENCHMARK, "-f", "--folds", ["0", "2"], "folds", [0, 2]),
    (PROBE, "-pretrained_weights", "--pretrained-weights", ["ck.pth"], "pretrained_weights", "ck.pth"),
    (PATIENT, "-pretrained_weights", "--pretrained-weights", ["ck.pth"], "pretrained_weights", "ck.pth"),
    (PATIENT, "-device", "--device", ["cpu"], "device", "cpu"),
    (PATIENT, "-dataset_json", "--dataset-json", ["dataset.json"], "dataset_json", "dataset.json"),
    (DEMO, "-device", "--device", ["cuda"], "device", "cuda"),
    (PATIENT_DICE, "-ref", "-r", ["ref.nii.gz"], "r", "ref.nii.gz"),
    (PATIENT_DICE, "-dataset_json", "--dataset-json", ["dataset.json"], "dataset_json", "dataset.json"),
]


@pytest.mark.parametrize("command, new, old, values, dest, expected", SPELLINGS,
                         ids=[f"{row[0][0]} {row[1]}" for row in SPELLINGS])
def test_both_spellings_parse_to_the_same_value(command, new, old, values, dest, expected):
    _, make_parser, required = command  # required options come first; a later -ref replaces the one there
    parser = make_parser()
    parsed = {spelling: getattr(parser.parse_args([*required, spelling, *values]), dest) for spelling in (new, old)}
    assert parsed == {new: expected, old: expected}
    # --help shows both, nnU-Net's spelling first: "-device DEVICE, --device DEVICE"
    shown = [line.strip() for line in parser.format_help().splitlines() if f", {old} " in line]
    assert len(shown) == 1 and shown[0].startswith(f"{new} "), shown


def test_single_dash_options_do_not_swallow_the_short_ones():
    """-device is not -d evice, -pretrained_weights not -p retrained_weights: the short options keep their values."""
    args = runner._parser().parse_args(["-d", "501", "-p", "nnUNetPlans", "-device", "cpu", "-pretrained_weights",
                                        "ck.pth", "-pretrainer", "nnUNetTrainerDDPMPretrain_minSNR5", "-f", "1"])
    assert (args.d, args.p, args.device, args.pretrained_weights, args.pretrainer, args.folds) == \
        ("501", "nnUNetPlans", "cpu", "ck.pth", "nnUNetTrainerDDPMPretrain_minSNR5", [1])
