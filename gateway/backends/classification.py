"""Triton's `classification` output parameter, for the local fallback: in place of the tensor,
the top k classes of each batch row as BYTES strings "value:index[:label]".

Triton's server does this after the model ran (its ``TopkClassifications``): the values of a
row sorted in decreasing order, k capped at the row's size, a value written as C++'s
``std::to_string`` writes it (``%f`` for floating point, the plain integer otherwise), the
output's label file line appended when there is one. The answer's shape is ``[k]``, or
``[batch, k]`` for a model that batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2

from gateway.errors import InvalidRequestError

CLASSIFICATION = "classification"


def requested_classes(output: service_pb2.ModelInferRequest.InferRequestedOutputTensor) -> int:
    """k of the output's `classification` parameter; 0 when it asks for the tensor itself.
    Its kind and value are checked as Triton's server checks them."""
    if CLASSIFICATION not in output.parameters:
        return 0
    parameter = output.parameters[CLASSIFICATION]
    if parameter.WhichOneof("parameter_choice") != "int64_param":
        raise InvalidRequestError(
            "invalid value type for 'classification' parameter, expected int64_param"
        )
    if parameter.int64_param < 1:
        # Triton's words for any value below one.
        raise InvalidRequestError("invalid value for 'classification' parameter, expected >= 0")
    return int(parameter.int64_param)


def top_classes(
    array: npt.NDArray[np.generic],
    datatype: str,
    k: int,
    batching: bool,
    labels: Sequence[str],
) -> npt.NDArray[np.object_]:
    """The classification strings of ``array`` (one row per batch entry when ``batching``)."""
    if datatype in ("BYTES", "BOOL"):
        raise InvalidRequestError(
            f"class result not available for output due to unsupported type '{datatype}'"
        )
    rows = array.reshape(array.shape[0], -1) if batching and array.ndim else array.reshape(1, -1)
    count = min(k, rows.shape[1])
    floating = np.issubdtype(array.dtype, np.floating)
    out = np.empty((rows.shape[0], count), dtype=object)
    for r, row in enumerate(rows):
        # Stable on ties, where C++'s std::sort leaves the order unspecified.
        order = np.argsort(-row.astype(np.float64), kind="stable")[:count]
        for c, index in enumerate(order):
            value = f"{float(row[index]):f}" if floating else str(int(row[index]))
            text = f"{value}:{int(index)}"
            if index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            out[r, c] = text.encode()
    return out if batching and array.ndim else out.reshape(count)
