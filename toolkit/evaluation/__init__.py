"""Scores (seed MSE, pixel error, membrane F1/IoU, V_rand, V_info), ``seg evaluate`` and its figures."""
