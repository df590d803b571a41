import numpy as np
import pytest

from gateway.backends.classification import top_classes
from gateway.errors import InvalidRequestError


def test_rows_are_ranked_with_their_labels_as_triton_writes_them() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    out = top_classes(scores, "FP32", 2, batching=True, labels=("cat", "dog", ""))
    assert out.shape == (2, 2)
    assert out.tolist() == [
        [b"0.700000:1:dog", b"0.200000:2"],
        [b"0.500000:0:cat", b"0.250000:1:dog"],  # a tie keeps the lower index first
    ]


def test_a_model_without_batching_is_one_row_and_integers_are_written_plainly() -> None:
    out = top_classes(np.array([3, -1, 7], dtype=np.int32), "INT32", 5, batching=False, labels=())
    assert out.tolist() == [b"7:2", b"3:0", b"-1:1"]


def test_strings_have_no_classes() -> None:
    with pytest.raises(InvalidRequestError, match="unsupported type 'BYTES'"):
        top_classes(np.array([b"a"], dtype=object), "BYTES", 1, batching=False, labels=())
