"""Build the iris example model: a logistic-regression classifier trained on the iris
dataset that ships with scikit-learn, exported to ONNX (``model.onnx``, ~0.5 KB).

Run from the repository root: ``.venv/bin/python examples/iris/build.py``. The result
is committed so the quickstart needs neither scikit-learn nor a download.
Input ``X``: FP32 [batch, 4] (sepal length/width, petal length/width in cm).
Outputs ``label``: INT64 [batch] (0 setosa, 1 versicolor, 2 virginica) and
``probabilities``: FP32 [batch, 3].
"""

from __future__ import annotations

import pathlib

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    model = LogisticRegression(max_iter=1000, random_state=0).fit(features, labels)
    onnx_model = to_onnx(
        model,
        features[:1],
        options={id(model): {"zipmap": False}},
        target_opset=15,
        final_types=None,
    )
    onnx_model.graph.input[0].name = "X"
    (HERE / "model.onnx").write_bytes(onnx_model.SerializeToString())
    print(f"accuracy on the training set: {model.score(features, labels):.3f}")


if __name__ == "__main__":
    main()
