"""How hard is the phantom? A cheap stand-in for a segmentation model, trained on few or many cases.

Training nnU-Net to measure this takes minutes; a per-pixel gradient-boosting classifier on the intensities and two
smoothed copies of every channel takes seconds and shows the same thing: whether more labelled cases help. Each
channel is z-scored inside the head first, as nnU-Net's ZScoreNormalization does, so that what the phantom varies
per scanner (scale, offset) is not counted as difficulty that nnU-Net would not see.

``python tools/phantom_difficulty.py`` prints the numbers summarised in
documentation/datasets.md.
"""
import argparse
from typing import Dict, List, Sequence, Tuple

import numpy as np

from nnunet_ddpm.dataset_conversion.synthetic_phantom import _blur, phantom_case


def make_cases(count: int, size: Sequence[int] = (64, 64), num_channels: int = 4, seed: int = 0, first: int = 0):
    """Cases ``first .. first + count - 1`` exactly as ``write_phantom_dataset`` draws them."""
    return [phantom_case(size, num_channels, np.random.default_rng([seed, i])) for i in range(first, first + count)]


def pixel_features(images: np.ndarray) -> np.ndarray:
    """(N pixels, 3 C) features: each channel z-scored inside the head, and blurred with sigma 1.5 and 4 pixels."""
    head = images[0] != 0
    features = []
    for channel in images:
        normalised = np.where(head, (channel - channel[head].mean()) / (channel[head].std() + 1e-8), 0)
        features += [normalised, _blur(normalised, 1.5), _blur(normalised, 4.0)]
    return np.stack([f.ravel() for f in features], axis=1)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    denominator = prediction.sum() + reference.sum()
    return 1.0 if denominator == 0 else float(2 * (prediction & reference).sum() / denominator)


def whole_tumour_dice(train_cases: List[Tuple[np.ndarray, np.ndarray]], test_cases, seed: int = 0) -> float:
    """Mean whole-tumour Dice on ``test_cases`` of a pixel classifier trained on ``train_cases``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits
    x = np.concatenate([pixel_features(images) for images, _ in train_cases])
    y = np.concatenate([(labels > 0).ravel() for _, labels in train_cases])
    # one thread: OpenMP threads that spin-wait for each other are many times slower on a busy 2-core machine
    with threadpool_limits(limits=1):
        model = HistGradientBoostingClassifier(max_iter=60, random_state=seed).fit(x, y)
        return float(np.mean([dice(model.predict(pixel_features(images)).reshape(labels.shape).astype(bool),
                                   labels > 0) for images, labels in test_cases]))


def best_threshold_dice(test_cases) -> Dict[str, float]:
    """Whole-tumour Dice of the best single threshold per channel (chosen on the test cases themselves, so an upper
    bound for thresholding), on the z-scored and on the blurred channel."""
    result = {}
    num_channels = test_cases[0][0].shape[0]
    features = [pixel_features(images) for images, _ in test_cases]
    references = [(labels > 0).ravel() for _, labels in test_cases]
    for c in range(num_channels):
        for kind, column in (("raw", 3 * c), ("blurred", 3 * c + 1)):
            values = np.concatenate([f[:, column] for f in features])
            best = 0.0
            for threshold in np.quantile(values, np.linspace(0.5, 0.995, 60)):
                for sign in (1, -1):
                    scores = [dice(sign * f[:, column] > sign * threshold, r) for f, r in zip(features, references)]
                    best = max(best, float(np.mean(scores)))
            result[f"channel {c} {kind}"] = best
    return result


def measure(num_train: int = 20, few: int = 2, draws: int = 3, num_test: int = 10, size=(64, 64),
            num_channels: int = 4, seed: int = 0) -> dict:
    """Dice of the many-case model, of ``draws`` few-case models (different cases each) and of thresholding."""
    train = make_cases(num_train, size, num_channels, seed)
    test = make_cases(num_test, size, num_channels, seed, first=num_train)
    many = whole_tumour_dice(train, test)
    rng = np.random.default_rng(seed)
    few_scores = [whole_tumour_dice([train[i] for i in rng.choice(num_train, few, replace=False)], test)
                  for _ in range(draws)]
    return {"many": many, "few": few_scores, "few_mean": float(np.mean(few_scores)),
            "threshold": best_threshold_dice(test)}


def main():
    parser = argparse.ArgumentParser(description="Measure the phantom's difficulty with a per-pixel classifier.")
    parser.add_argument("--size", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    for seed in args.seeds:
        r = measure(size=tuple(args.size), seed=seed)
        print(f"seed {seed}: 20 cases {r['many']:.3f}, 2 cases {r['few_mean']:.3f} "
              f"({', '.join(f'{s:.3f}' for s in r['few'])}), best single-channel threshold "
              f"{max(r['threshold'].values()):.3f}")


if __name__ == "__main__":
    main()
