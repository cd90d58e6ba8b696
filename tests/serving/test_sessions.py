"""Session ring buffers: order checks, pruning by age and count, LRU eviction; camera lists off the wire."""

from __future__ import annotations

import numpy as np
import pytest

from vidplan_server.serving.errors import InvalidArgument
from vidplan_server.serving.messages import Image, frames_by_camera
from vidplan_server.serving.sessions import SessionStore, StoredFrame


def _frame(seq: int, t: float) -> StoredFrame:
    return StoredFrame(frames=np.zeros((3, 4, 4, 3), np.uint8), timestamp_s=t, sequence=seq)


def test_frames_older_than_keep_s_and_beyond_capacity_are_dropped():
    store = SessionStore(capacity=5, ttl_s=60, max_sessions=4, keep_s=0.4)
    for k in range(10):
        frames = store.append("r", _frame(k, k / 15))
    assert [f.sequence for f in frames] == [5, 6, 7, 8, 9]  # capacity 5 ...
    assert all(f.timestamp_s >= 9 / 15 - 0.4 for f in frames)  # ... and nothing older than keep_s
    store = SessionStore(capacity=100, ttl_s=60, max_sessions=4, keep_s=0.4)
    for k in range(10):
        frames = store.append("r", _frame(k, k / 15))
    assert [f.sequence for f in frames] == [3, 4, 5, 6, 7, 8, 9]


def test_least_recently_used_session_is_evicted():
    store = SessionStore(capacity=4, ttl_s=60, max_sessions=2)
    store.append("a", _frame(1, 0.0))
    store.append("b", _frame(1, 0.0))
    store.append("a", _frame(2, 0.1))  # a is now the most recent
    store.append("c", _frame(1, 0.0))  # evicts b
    assert len(store) == 2
    store.check("b", 1, 0.0)  # b starts over: no error
    with pytest.raises(InvalidArgument, match="^sequence"):
        store.check("a", 2, 0.2)


def test_a_camera_listed_twice_is_refused():
    img = Image(data=b"x")
    with pytest.raises(InvalidArgument, match=r"^observation.frames: camera 'wrist_image_left' appears more than once"):
        frames_by_camera([("wrist_image_left", img), ("wrist_image_left", img)], "observation.frames")
