"""A trainer variant is one declaration: a user's class in their own trainer folder, decorated once, is found by
nnU-Net's trainer search with its environment-budget and label-budget variants, and is a method of the comparison."""
import subprocess
import sys
import textwrap

import pytest

from nnunet_ddpm.training.variants.declaration import declare

USER_TRAINER = textwrap.dedent('''
    from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune
    from nnunet_ddpm.training.variants.declaration import trainer_variant


    @trainer_variant(method="finetune_t100", title="DDPM fine-tune at timestep 100")
    class nnUNetTrainerDDPMFinetune_t100(nnUNetTrainerDDPMFinetune):
        finetune_timestep = 100
''')

FIND = textwrap.dedent('''
    import json
    from nnunet_ddpm.nnunet_trainers import find_trainer_class
    found = find_trainer_class("nnUNetTrainerDDPMFinetune_t100_demo_10labels")
    base = found.__bases__[1]
    from nnunet_ddpm.comparison.methods import METHODS
    print(json.dumps({"labelled": found.num_labelled_cases, "base": base.__name__,
                      "timestep": found.finetune_timestep, "pretrainer": found.pretraining_trainer_name,
                      "plain": find_trainer_class("nnUNetTrainerDDPMFinetune_t100_5labels").num_labelled_cases,
                      "method": METHODS["finetune_t100"]._asdict()}))
''')


def test_a_variant_declared_once_is_a_trainer_with_its_budgets_and_a_method(tmp_path):
    folder = tmp_path / "my_trainers"
    folder.mkdir()
    (folder / "my_variant.py").write_text(USER_TRAINER)
    env = {"nnUNet_extTrainer": str(folder), "PATH": "", "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run([sys.executable, "-c", FIND], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "labelled": 10, "base": "nnUNetTrainerDDPMFinetune_t100_demo", "timestep": 100,
        "pretrainer": "nnUNetTrainerDDPMPretrain_demo", "plain": 5,
        "method": {"trainer": "nnUNetTrainerDDPMFinetune_t100", "title": "DDPM fine-tune at timestep 100",
                   "probes_features": False}}


def test_a_method_name_belongs_to_one_trainer():
    from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune

    class nnUNetTrainerDDPMFinetune_other(nnUNetTrainerDDPMFinetune):
        pass
    with pytest.raises(ValueError, match="Method 'finetune' is already nnUNetTrainerDDPMFinetune; give "
                                         "nnUNetTrainerDDPMFinetune_other another name"):
        declare(nnUNetTrainerDDPMFinetune_other, method="finetune")
