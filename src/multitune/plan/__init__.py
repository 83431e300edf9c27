"""`multitune plan`'s estimator: model shapes, memory, FLOPs and the GPU table, as small pure functions.

Nothing here loads weights or touches data; `multitune/recipes/plan.py` (the verb's recipe) feeds these
functions the config, the model's shape and the data's batch geometry.
"""
