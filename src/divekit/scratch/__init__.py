"""The course's building blocks written by hand on raw tensors, each tested against PyTorch.

Read these to learn how a layer works; use ``torch.nn`` (which the models do) to train fast.
"""
