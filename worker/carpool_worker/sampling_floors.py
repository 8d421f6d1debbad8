"""The smallest sampling settings the sampler honours as given, apart from torch so that the
HTTP layer (and an emulated worker, which has no torch) can refuse smaller ones.

Contract: constants only; ``sampling.sample`` clamps to them, ``api`` refuses below them.
"""

# Below this, float32 cumulative sums cannot tell a top_p from 0; the first token decides anyway.
MIN_TOP_P = 1e-6
# The sampler divides by at least this; a smaller one would be changed on the device (1e-300 is
# 0 in float32, which would turn the request greedy), so the HTTP layer refuses it instead.
MIN_TEMPERATURE = 1e-5
