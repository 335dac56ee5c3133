"""``divekit bench``: the book's training loops in plain PyTorch against divekit, on this machine.

One module per case holds the book's loop as the course writes it, with its model, and says
what divekit trains in its place (:mod:`~divekit.bench.lenet`, :mod:`~divekit.bench.lstm`,
:mod:`~divekit.bench.transformer`, :mod:`~divekit.bench.tiny_ssd`);
:mod:`~divekit.bench.allocator` measures a process setting; :mod:`~divekit.bench.runner` times
them and prints the table.
"""
