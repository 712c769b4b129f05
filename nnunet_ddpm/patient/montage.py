"""A PNG overview of a segmented volume: a grid of slices, first channel in grey with the labels on top, the
annotated slices framed in red, so a clinician can check the result at a glance."""
from typing import Sequence

import numpy as np


def montage_slices(num_slices: int, annotated: Sequence[int], foreground: Sequence[int], segmented: Sequence[int],
                   max_tiles: int = 24) -> list:
    """The annotated slices plus evenly spread slices with predicted foreground (else any segmented ones)."""
    pool = [i for i in (foreground or segmented or range(num_slices)) if i not in annotated]
    room = max(0, max_tiles - len(annotated))
    spread = [pool[int(k)] for k in np.linspace(0, len(pool) - 1, min(room, len(pool)))] if pool and room else []
    return sorted(set(annotated) | set(spread))


def write_montage(image: np.ndarray, segmentation: np.ndarray, annotated: Sequence[int], segmented: Sequence[int],
                  path: str, title: str, max_tiles: int = 24) -> list:
    """``image`` and ``segmentation`` (slices, H, W) with slices along the first axis; returns the slices shown."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    foreground = [int(i) for i in np.flatnonzero(segmentation.reshape(len(segmentation), -1).any(1))]
    shown = montage_slices(len(image), list(annotated), foreground, list(segmented), max_tiles)
    columns = min(6, len(shown))
    rows = int(np.ceil(len(shown) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.6 * rows), squeeze=False)
    colours = ListedColormap(["#00000000", "#ffd700", "#1e90ff", "#32cd32", "#ff00ff", "#00ffff", "#ff8c00"])
    content = image[image != 0]
    low, high = np.percentile(content, (1, 99)) if content.size else (0, 1)
    for ax, index in zip(axes.flat, shown):
        ax.imshow(image[index], cmap="gray", vmin=low, vmax=high)
        labels = np.ma.masked_equal(segmentation[index].astype(int) % colours.N, 0)
        ax.imshow(labels, cmap=colours, vmin=0, vmax=colours.N - 1, alpha=0.45, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        is_annotated = index in annotated
        ax.set_title(f"{index}{' annotated' if is_annotated else ''}", fontsize=8,
                     color="red" if is_annotated else "black")
        for spine in ax.spines.values():
            spine.set_edgecolor("red" if is_annotated else "white")
            spine.set_linewidth(3 if is_annotated else 0.5)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return shown
