"""FLARE22 constants: the container command, sampling, penalties and ranking weights.

Sources: flare22.grand-challenge.org/Evaluation and the official code, JunMa11/FLARE FLARE22/Evaluation
(docs/metrics.md says which number comes from where). Units: seconds, MiB.
"""

from __future__ import annotations

# The container contract.
CONTAINER_INPUTS = "/workspace/inputs"
CONTAINER_OUTPUTS = "/workspace/outputs"
CONTAINER_COMMAND = ["/bin/bash", "-c", "sh predict.sh"]

# Sampling, as the official Efficiency.py did it.
SAMPLE_INTERVAL_S = 0.1
STABLE_MAX_FRACTION = 0.02  # GPU_Mem: largest value seen in more than 2 % of samples
GPU_TOLERANCE_MIB = 2048.0  # AUC_GPU_Time_tol2G counts only memory above 2 GiB
CPU_DENOMINATOR_BIAS = 0.1  # the official "+0.1" in 100*dt/(total+0.1)

# Worst values for a stuck or failed case (flare22.grand-challenge.org/Evaluation).
TIME_LIMIT_S = 3600.0
PENALTY_DSC = 0.0
PENALTY_NSD = 0.0
PENALTY_TIME_S = 3600.0
PENALTY_AUC_GPU_TOL2G = 3600 * (1024 * 10 - 2048)  # 29_491_200 MiB*s
PENALTY_AUC_CPU = 3600 * 100  # 360_000 %*s

# Rank-then-aggregate: weights per metric, and whether higher is better.
RANK_WEIGHTS = {"DSC": 1.0, "NSD": 1.0, "Time": 1.0, "AUC_GPU_Time_tol2G": 0.5, "AUC_CPU_Time": 0.5}
HIGHER_IS_BETTER = {"DSC": True, "NSD": True, "Time": False, "AUC_GPU_Time_tol2G": False, "AUC_CPU_Time": False}
RANK_NORMALISER = 4.0
# Rounding of the official CSVs, applied before ranking so that ties fall as they did.
ROUND_DECIMALS = {"DSC": 4, "NSD": 4, "Time": 2, "AUC_GPU_Time_tol2G": 0, "AUC_CPU_Time": 2}
