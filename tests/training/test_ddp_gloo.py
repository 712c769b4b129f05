"""DDP on CPU: two gloo ranks with half a batch each train the DDPM denoiser as one process with the whole batch does.

nnU-Net's ``nnUNetv2_train ... -num_gpus N`` starts N processes with ``torch.multiprocessing.spawn``, joins an NCCL
process group, and in ``nnUNetTrainer.initialize`` gives each rank ``batch_size / N`` samples and wraps the network in
``DistributedDataParallel``. NCCL needs GPUs, so this test does the same with the gloo backend on CPU: two spawned
processes, each with a real ``nnUNetTrainerDDPMPretrain`` (tiny plans written here: 3 stages, 8-32 features,
2 channels, 32 x 32, batch 4) initialised by nnU-Net's own ``initialize`` (so by nnU-Net's batch split and DDP
wrapping; only ``device_ids``, which CPU modules must not get, is dropped). Rank 0 first trains the same trainer
without a process group on the whole batch: the one-process reference.

Per sample, the timesteps and noise come from the test (``draw_timesteps_and_noise`` is overridden), so that both runs
see exactly the same t and eps for every image; everything else is the trainer's own code: ``on_train_epoch_start``,
``train_step`` (forward through DDP, backward with DDP's gradient all-reduce, clipping, AdamW, ``update_ema``),
nnU-Net's ``on_train_epoch_end``, ``validation_step`` and ``on_validation_epoch_end`` (losses gathered across ranks)
and ``save_checkpoint``. What the workers record is compared here, in the pytest process.
"""
import os
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TINY_DATASET_JSON, tiny_plans

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

WORLD_SIZE = 2
BATCH = 4  # global batch; nnU-Net gives each rank BATCH // WORLD_SIZE samples
CHANNELS = 2
SIZE = 32
STEPS = 3
DATASET = "Dataset990_DDPTiny"
# DDP averages the two ranks' gradients of half-batch means, one process takes the gradient of the whole-batch mean:
# equal up to float rounding (measured: weights differ by at most 3e-8 after 3 steps that move them by up to 6e-4)
TOLERANCE = 1e-6



def _data() -> dict:
    """Images, timesteps and noise of every sample, the same in every process (seeded CPU generator)."""
    generator = torch.Generator().manual_seed(0)
    shape = (STEPS + 1, BATCH, CHANNELS, SIZE, SIZE)  # STEPS training batches, then one validation batch
    return {"images": torch.randn(shape, generator=generator),
            "timesteps": torch.randint(0, 1000, shape[:2], generator=generator),
            "noise": torch.randn(shape, generator=generator)}


def _parameters(module: torch.nn.Module) -> dict:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _train_one_epoch(trainer, samples: slice) -> dict:
    """STEPS training steps, the epoch-end loss gathering and one validation step on ``samples`` of every batch."""
    data = _data()
    trainer.prescribed = [(data["timesteps"][k, samples], data["noise"][k, samples]) for k in range(STEPS + 1)]
    record = {"initial": _parameters(trainer.unwrapped_network()), "steps": [], "batch_size": trainer.batch_size,
              "network_class": type(trainer.network).__name__,
              "trainable": [n for n, p in trainer.unwrapped_network().named_parameters() if p.requires_grad]}
    trainer.on_train_epoch_start()
    train_outputs = []
    for k in range(STEPS):
        train_outputs.append(trainer.train_step({"data": data["images"][k, samples]}))
        record["steps"].append(_parameters(trainer.unwrapped_network()))
    record["without_gradient"] = [n for n, p in trainer.unwrapped_network().named_parameters()
                                  if p.requires_grad and p.grad is None]
    trainer.on_train_epoch_end(train_outputs)
    record["train_loss_local"] = float(np.mean([o["loss"] for o in train_outputs]))
    record["train_loss_logged"] = float(trainer.logger.get_value("train_losses", step=-1))
    with torch.no_grad():  # as in nnU-Net's run_training
        trainer.on_validation_epoch_start()
        validation_output = trainer.validation_step({"data": data["images"][STEPS, samples]})
        trainer.on_validation_epoch_end([validation_output])
    record["val_loss_local"] = float(validation_output["loss"])
    record["val_loss_logged"] = float(trainer.logger.get_value("val_losses", step=-1))
    record["ema"] = _parameters(trainer.ema_network)
    record["ema_updates"] = trainer.ema_updates
    # what the trainer's own draw (global generators) gives next, for the same batch shape in every process
    record["next_timesteps"] = trainer.unprescribed_draw(data["images"][0])[0]
    record["next_numpy"] = int(np.random.randint(2 ** 31))
    return record


def _segmentation_networks_under_ddp(samples: slice) -> dict:
    """Two DDP training steps of the fine-tuning, frozen-encoder and pixel-classifier networks.

    DDP as nnU-Net builds it fails at the second step if a trainable parameter got no gradient in the first (what the
    pretraining network did before its unused output layers were frozen). The loss uses every output, as nnU-Net's
    deep-supervision loss under DDP does (it weights the lowest output 1e-6, not 0, for this reason). nnU-Net turns
    BatchNorm (the pixel classifier's MLPs) into SyncBatchNorm, which refuses CPU modules: left out here.
    Returns, per trainer, the trainable parameters without a gradient after the second step (expected: none).
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from torch.nn.parallel import DistributedDataParallel

    from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import (nnUNetTrainerDDPMFinetune,
                                                                nnUNetTrainerDDPMFinetuneFrozenEncoder)
    from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier

    plans_manager = PlansManager(tiny_plans(DATASET, BATCH, SIZE, CHANNELS))
    images = _data()["images"][0, samples]
    without_gradient = {}
    for trainer_class, deep_supervision in ((nnUNetTrainerDDPMFinetune, True),
                                            (nnUNetTrainerDDPMFinetuneFrozenEncoder, True),
                                            (nnUNetTrainerDDPMPixelClassifier, False)):
        network = trainer_class.build_network_architecture(plans_manager, plans_manager.get_configuration("2d"),
                                                           CHANNELS, len(TINY_DATASET_JSON["labels"]), deep_supervision)
        model = DistributedDataParallel(network.train())
        optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            outputs = model(images)
            sum(o.float().mean() for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])).backward()
            optimizer.step()
        without_gradient[trainer_class.__name__] = [n for n, p in network.named_parameters()
                                                    if p.requires_grad and p.grad is None]
    return without_gradient


def _worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """One rank of the DDP run; rank 0 first runs the one-process reference. Writes what it saw to FOLDER/*.pt."""
    folder = Path(folder)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(folder / name)
    os.environ["nnUNet_compile"] = "false"
    torch.set_num_threads(1)
    import torch.distributed as dist
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
    from torch.nn.parallel import DistributedDataParallel

    from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain

    class PrescribedDraws(nnUNetTrainerDDPMPretrain):
        """The pretraining trainer with each sample's t and eps given by the test (``self.prescribed``, in order)."""

        def draw_timesteps_and_noise(self, images, generator=None):
            timesteps, noise = self.prescribed.pop(0)
            assert noise.shape == images.shape
            return timesteps.to(self.device), noise.to(self.device)

        def unprescribed_draw(self, images):
            return super().draw_timesteps_and_noise(images)

    cpu = torch.device("cpu")
    if rank == 0:
        reference = PrescribedDraws(tiny_plans(DATASET, BATCH, SIZE, CHANNELS), "2d", "all", TINY_DATASET_JSON, cpu)
        reference.initialize()
        torch.save(_train_one_epoch(reference, slice(0, BATCH)), folder / "reference.pt")

    # nnUNetTrainer.__init__ sets a CUDA device when a process group exists: build the trainer first, as on CPU
    trainer = PrescribedDraws(tiny_plans(DATASET, BATCH, SIZE, CHANNELS), "2d", "all", TINY_DATASET_JSON, cpu)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    trainer.is_ddp, trainer.local_rank = True, rank
    # nnU-Net wraps with DDP(network, device_ids=[rank]); DDP refuses device_ids for a module on the CPU
    nnunet_trainer_module.DDP = lambda network, device_ids: DistributedDataParallel(network)
    trainer.initialize()
    half = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)  # this rank's samples of every batch
    record = _train_one_epoch(trainer, half)
    trainer.save_checkpoint(str(folder / f"checkpoint_rank{rank}.pth"))  # only rank 0 may write it
    record["segmentation_networks_without_gradient"] = _segmentation_networks_under_ddp(half)
    torch.save(record, folder / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ddp_gloo")
    preprocessed = folder / "nnUNet_preprocessed" / DATASET / "nnUNetPlans_2d"
    preprocessed.mkdir(parents=True)
    (preprocessed / "case_000.b2nd").touch()  # nnU-Net's initialize infers the dataset class from file endings
    for name in ("nnUNet_raw", "nnUNet_results"):
        (folder / name).mkdir()
    torch.multiprocessing.spawn(_worker, args=(WORLD_SIZE, _free_port(), str(folder)), nprocs=WORLD_SIZE)
    records = {name: torch.load(folder / f"{name}.pt") for name in ("reference", "rank0", "rank1")}
    records["folder"] = folder
    return records


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _has_a_gradient(name: str) -> bool:
    """False for the bias of a convolution that an instance norm follows (nnU-Net's conv_bias: True).

    The norm subtracts every channel's mean, so such a bias has zero gradient in exact arithmetic; what it gets is
    float rounding, which AdamW normalises into steps of about the learning rate with an arbitrary sign. Any change of
    summation order (two half batches instead of one batch) changes those steps: they are not compared.
    """
    return not (".convs." in name and name.endswith(".conv.bias"))


def _with_gradient(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if _has_a_gradient(k)}


def test_nnunet_split_the_batch_and_wrapped_the_network(runs):
    assert runs["reference"]["batch_size"] == BATCH and runs["reference"]["network_class"] == "TimeConditionedUNet"
    for rank in ("rank0", "rank1"):
        assert runs[rank]["batch_size"] == BATCH // WORLD_SIZE
        assert runs[rank]["network_class"] == "DistributedDataParallel"


def test_every_trainable_parameter_gets_a_gradient(runs):
    """DDP as nnU-Net builds it (find_unused_parameters=False) fails at the second step otherwise."""
    reference = runs["reference"]
    assert reference["without_gradient"] == []
    frozen = [n for n in reference["initial"] if n not in reference["trainable"]]
    assert frozen and all(".seg_layers." in n for n in frozen)  # the decoder's unused deep-supervision outputs
    for name in frozen:
        assert torch.equal(reference["steps"][-1][name], reference["initial"][name])


def test_training_changes_every_trainable_parameter(runs):
    reference = runs["reference"]
    for name in reference["trainable"]:
        assert not torch.equal(reference["steps"][-1][name], reference["initial"][name]), name


def test_both_ranks_hold_the_same_weights_after_every_step(runs):
    assert torch.equal(runs["rank0"]["initial"]["unet.encoder.stages.0.0.convs.0.conv.weight"],
                       runs["rank1"]["initial"]["unet.encoder.stages.0.0.convs.0.conv.weight"])
    for k in range(STEPS):
        assert _max_difference(runs["rank0"]["steps"][k], runs["rank1"]["steps"][k]) == 0, k
    assert _max_difference(runs["rank0"]["ema"], runs["rank1"]["ema"]) == 0


def test_two_ranks_train_as_one_process_on_the_whole_batch(runs):
    reference, ddp = runs["reference"], runs["rank0"]
    assert _max_difference(reference["initial"], ddp["initial"]) == 0
    assert len(_with_gradient(reference["initial"])) > len(reference["initial"]) / 2
    for k in range(STEPS):
        change = _max_difference(_with_gradient(reference["steps"][k]), _with_gradient(reference["initial"]))
        difference = _max_difference(_with_gradient(reference["steps"][k]), _with_gradient(ddp["steps"][k]))
        assert difference < TOLERANCE < change / 100, (k, difference, change)


def _expected_ema(record: dict, decay: float) -> dict:
    """The EMA recomputed from the network's weights after each step, with the trainer's warm-up."""
    ema = {k: v.clone() for k, v in record["initial"].items()}
    for n, weights in enumerate(record["steps"]):
        d = min(decay, (1 + n) / (10 + n))
        ema = {k: ema[k] + (1 - d) * (weights[k] - ema[k]) for k in ema}
    return ema


def test_ema_follows_the_unwrapped_network_and_agrees_across_processes(runs):
    for name in ("reference", "rank0", "rank1"):
        record = runs[name]
        assert record["ema_updates"] == STEPS
        assert _max_difference(record["ema"], _expected_ema(record, 0.999)) < 1e-6, name
        assert _max_difference(record["ema"], record["steps"][-1]) > 10 * TOLERANCE  # not the weights themselves
        assert _max_difference(record["ema"], record["initial"]) > 100 * TOLERANCE
    assert _max_difference(_with_gradient(runs["reference"]["ema"]), _with_gradient(runs["rank0"]["ema"])) < TOLERANCE


def test_losses_are_gathered_across_ranks(runs):
    reference, rank0, rank1 = runs["reference"], runs["rank0"], runs["rank1"]
    for kind in ("train", "val"):  # train: nnU-Net's on_train_epoch_end; val: the pretraining trainer's own
        local = [rank0[f"{kind}_loss_local"], rank1[f"{kind}_loss_local"]]
        assert abs(local[0] - local[1]) > 1e-3, kind  # the halves differ, so the gathering is seen
        for record in (rank0, rank1):
            assert record[f"{kind}_loss_logged"] == pytest.approx(np.mean(local), rel=1e-6), kind
            assert record[f"{kind}_loss_logged"] == pytest.approx(reference[f"{kind}_loss_logged"], rel=1e-5), kind


def test_each_rank_draws_its_own_timesteps_and_noise(runs):
    """Rank 0 continues the one-process random stream; rank 1 draws other timesteps, noise and batches."""
    reference, rank0, rank1 = runs["reference"], runs["rank0"], runs["rank1"]
    assert torch.equal(rank0["next_timesteps"], reference["next_timesteps"])
    assert rank0["next_numpy"] == reference["next_numpy"]
    assert not torch.equal(rank1["next_timesteps"], rank0["next_timesteps"])
    assert rank1["next_numpy"] != rank0["next_numpy"]


def test_only_rank_0_writes_the_checkpoint_without_ddp_prefixes(runs):
    assert not (runs["folder"] / "checkpoint_rank1.pth").exists()
    checkpoint = torch.load(runs["folder"] / "checkpoint_rank0.pth", weights_only=False)
    for key, weights in (("network_weights", runs["rank0"]["ema"]),
                         ("training_network_weights", runs["rank0"]["steps"][-1])):
        assert not any(k.startswith("module.") for k in checkpoint[key])
        assert _max_difference({k: checkpoint[key][k] for k in weights}, weights) == 0
    assert checkpoint["ema_updates"] == STEPS


def test_segmentation_networks_train_under_ddp(runs):
    for rank in ("rank0", "rank1"):
        assert runs[rank]["segmentation_networks_without_gradient"] == {
            "nnUNetTrainerDDPMFinetune": [], "nnUNetTrainerDDPMFinetuneFrozenEncoder": [],
            "nnUNetTrainerDDPMPixelClassifier": []}
