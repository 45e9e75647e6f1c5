"""An engine instance's batch arrays are kept from batch to batch (no fresh multi-megabyte array per batch), and an
output an engine returns inside them does not change when the next batch is merged."""

from __future__ import annotations

import numpy as np

from ipsbench.server.batching.batch import MergeBuffers


def requests(values, rows=1, features=3):
    return [{"x": np.full((rows, features), v, np.float32)} for v in values]


def test_a_batch_is_merged_into_the_same_memory_each_time():
    buffers = MergeBuffers()
    first = buffers.merge(requests([1, 2, 3]))["x"]
    second = buffers.merge(requests([4, 5]))["x"]
    assert np.shares_memory(first, second)
    np.testing.assert_array_equal(second, [[4] * 3, [5] * 3])
    bigger = buffers.merge(requests([6, 7, 8, 9]))["x"]  # grows once for a larger batch
    np.testing.assert_array_equal(bigger[:, 0], [6, 7, 8, 9])


def test_a_request_alone_is_passed_through_untouched():
    alone = requests([1])
    assert MergeBuffers().merge(alone)["x"] is alone[0]["x"]


def test_outputs_inside_the_buffers_are_copied_before_the_next_batch():
    buffers = MergeBuffers()
    merged = buffers.merge(requests([1, 2]))["x"]
    fresh = merged * 2
    identity, computed = buffers.detach([merged[:1], fresh])  # an engine that hands its input back
    assert computed is fresh
    buffers.merge(requests([7, 8]))
    np.testing.assert_array_equal(identity, [[1, 1, 1]])


def test_inputs_of_different_trailing_shapes_are_concatenated_as_before():
    buffers = MergeBuffers()
    merged = buffers.merge([{"x": np.ones((1, 3), np.float32)}, {"x": np.ones((2, 3), np.float32)}])
    assert merged["x"].shape == (3, 3)
    other = buffers.merge([{"x": np.ones((1, 5), np.float16)}, {"x": np.ones((1, 5), np.float16)}])
    assert other["x"].dtype == np.float16 and other["x"].shape == (2, 5)
