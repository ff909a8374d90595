"""Hypothesis strategies for frames and messages, shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

frame = st.binary(max_size=24)
nonempty_frame = st.binary(min_size=1, max_size=24)
frames = st.lists(frame, max_size=8)
body = st.lists(frame, min_size=1, max_size=5)
routing = st.lists(nonempty_frame, min_size=1, max_size=3)
# Messages that tend to look almost right: empty frames and short lists are common.
messages = st.lists(st.one_of(st.just(b""), frame), max_size=8)
