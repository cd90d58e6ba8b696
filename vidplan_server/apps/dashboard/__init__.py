"""``vidplan dashboard --replay DIR``: the operator dashboard on a recorded run, without a live server."""
