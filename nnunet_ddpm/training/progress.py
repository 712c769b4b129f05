"""Progress plots and sample grids for DDPM pretraining."""
import os
from typing import Optional

import matplotlib

matplotlib.use('agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402


class DenoisingProgressLogger(LocalLogger):
    """nnU-Net's per-epoch logger with denoising losses in place of pseudo-Dice.

    ``ema_val_losses`` (a moving average of the validation denoising loss) decides the best checkpoint, as
    ``ema_fg_dice`` does for segmentation.
    """

    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        self.my_fantastic_logging = {key: [] for key in (
            'train_losses', 'val_losses', 'ema_val_losses', 'lrs', 'epoch_start_timestamps', 'epoch_end_timestamps')}

    def plot_progress_png(self, output_folder: str):
        log = self.my_fantastic_logging
        epochs = min(len(v) for v in log.values())
        x = np.arange(epochs)
        fig, (ax_loss, ax_time, ax_lr) = plt.subplots(3, 1, figsize=(10, 14))
        ax_loss.plot(x, log['train_losses'][:epochs], 'b-', label='train denoising loss (MSE on noise)')
        ax_loss.plot(x, log['val_losses'][:epochs], 'r:', label='validation denoising loss')
        ax_loss.plot(x, log['ema_val_losses'][:epochs], 'r-', label='validation loss (moving average)')
        ax_loss.set_yscale('log')
        ax_loss.set_xlabel('epoch')
        ax_loss.set_ylabel('loss')
        ax_loss.legend()
        durations = np.array(log['epoch_end_timestamps'][:epochs]) - np.array(log['epoch_start_timestamps'][:epochs])
        ax_time.plot(x, durations, 'b-', label='epoch duration')
        ax_time.set_ylim(bottom=0)
        ax_time.set_xlabel('epoch')
        ax_time.set_ylabel('time [s]')
        ax_time.legend()
        ax_lr.plot(x, log['lrs'][:epochs], 'b-', label='learning rate')
        ax_lr.set_xlabel('epoch')
        ax_lr.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(output_folder, 'progress.png'))
        plt.close(fig)


def _central_slice(images: torch.Tensor) -> np.ndarray:
    """(N, C, *spatial) -> (N, C, H, W): 3D volumes are shown by their middle slice along the first axis."""
    array = images.detach().float().cpu().numpy()
    while array.ndim > 4:
        array = array[:, :, array.shape[2] // 2]
    return array


def save_sample_grid(generated: torch.Tensor, path: str, channel_names: Optional[list] = None,
                     real: Optional[torch.Tensor] = None, title: str = '') -> None:
    """A grid with one column per image and, per channel, a row of real images (if given) above a row of generated
    ones, so that many samples fit a screen and each channel's real and generated images sit side by side.

    Each channel uses one grey scale (1st-99th percentile of the real images if given, else of the samples) so
    real and generated intensities can be compared.
    """
    blocks = ([('real', _central_slice(real))] if real is not None else []) + [('generated', _central_slice(generated))]
    reference = _central_slice(real if real is not None else generated)
    n_channels = reference.shape[1]
    limits = [np.percentile(reference[:, c], (1, 99)) for c in range(n_channels)]
    names = channel_names or [f'channel {c}' for c in range(n_channels)]
    columns = max(len(images) for _, images in blocks)
    rows = [(c, kind, images) for c in range(n_channels) for kind, images in blocks]
    fig, axes = plt.subplots(len(rows), columns, figsize=(2 * columns, 2 * len(rows)), squeeze=False)
    for r, (c, kind, images) in enumerate(rows):
        for column in range(columns):
            ax = axes[r, column]
            ax.set_xticks([])
            ax.set_yticks([])
            if column < len(images):
                ax.imshow(images[column][c], cmap='gray', vmin=limits[c][0], vmax=limits[c][1])
            else:
                ax.axis('off')
            if column == 0:
                ax.set_ylabel(f'{names[c]}\n{kind}', fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    fig.savefig(path)
    plt.close(fig)
