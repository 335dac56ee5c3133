"""BucketLoader's batch transform (its batching and trimming are tested in test_translation)."""

from __future__ import annotations

import torch

from divekit.data.buckets import BucketLoader


def _sequences(n: int = 50, width: int = 12):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, width + 1, (n,), generator=generator)
    tokens = torch.randint(1, 100, (n, width), generator=generator)
    tokens[torch.arange(width) >= lengths[:, None]] = 0  # padding
    return tokens, lengths, torch.arange(n)


def _loader(transform=None, shuffle=True):
    tokens, lengths, ids = _sequences()
    return BucketLoader((tokens, lengths, ids), sort_key=lengths, trim=(lengths, None, None),
                        batch_size=8, shuffle=shuffle, seed=3, transform=transform)


def test_transform_sees_every_trimmed_batch_and_its_result_is_served():
    seen = []

    def transform(tokens, lengths, ids):
        seen.append((tokens.clone(), lengths.clone(), ids.clone()))
        return tokens * 2, lengths, -ids

    plain, transformed = list(_loader()), list(_loader(transform))
    assert len(seen) == len(plain) == len(transformed) == 7
    for (tokens, lengths, ids), got, (seen_tokens, _, _) in zip(plain, transformed, seen,
                                                                strict=True):
        assert tokens.shape[1] == int(lengths.max())  # trimmed before the transform
        assert torch.equal(seen_tokens, tokens)
        assert torch.equal(got[0], tokens * 2) and torch.equal(got[2], -ids)
        assert isinstance(got, tuple)


def test_transform_skips_the_batches_a_resume_skips():
    calls = []
    loader = _loader(lambda *batch: calls.append(1) or batch, shuffle=False)
    loader.skip_batches(5)
    served = list(loader)
    assert len(served) == 2 and len(calls) == 2
    assert torch.equal(torch.cat([b[2] for b in served]),
                       torch.cat([b[2] for b in list(_loader(shuffle=False))[5:]]))
