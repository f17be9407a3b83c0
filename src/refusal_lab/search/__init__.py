"""The abliteration search space: tent-kernel weights, interpolated directions, the refined direction and the
edit a trial applies (hooks, weights, save/load)."""
