"""Sharded on-disk text-embedding cache: equality, resume, rank sharding, fp16, misses (tiny encoder)."""

from __future__ import annotations

import pytest
import torch

from asdcli.conditioning import TextEmbeddings
from asdcli.errors import UserError
from asdcli.priors.text_cache import TextCacheMiss, TextEmbeddingCache
from asdcli.priors.tiny import TinyRandomPriorConfig, build_tiny_text

PROMPTS = [f"a {c} {s}" for c in ("red", "green", "blue", "white", "black") for s in ("cube", "cone", "torus", "cat",
                                                                                      "dog", "car", "lamp")]
SUFFIXES = ["", ", front view", ", back view"]


@pytest.fixture(scope="module")
def encoder():
    return build_tiny_text(TinyRandomPriorConfig(seed=0))


class CountingEncoder:
    """encode_fn that counts the texts it encodes and can fail after a number of calls (an interruption)."""

    def __init__(self, encoder, fail_after: int | None = None) -> None:
        self.encoder, self.fail_after, self.calls, self.texts = encoder, fail_after, 0, []

    def __call__(self, texts: list[str]) -> TextEmbeddings:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.texts += texts
        return self.encoder.encode_uncached(texts)


def _close(a, b, atol=1e-5, rtol=0.0):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    return True


def _shards(cache):
    return sorted(p.name for p in (cache.dir / "shards").glob("shard-*.safetensors"))


def test_build_then_get_matches_the_encoder(tmp_path, encoder):
    cache = TextEmbeddingCache(tmp_path, encoder.encoder_id, shard_size=16)
    stats = cache.build(PROMPTS + PROMPTS[:3], encoder.encode_uncached, batch_size=8, dtype=torch.float32,
                        suffixes=SUFFIXES, progress=False)
    assert stats == {"encoded": len(PROMPTS) * 3, "skipped_shards": 0, "indexed": True}  # duplicates once
    assert len(cache) == len(PROMPTS) * 3 and len(_shards(cache)) == -(-len(PROMPTS) * 3 // 16)
    picks = [PROMPTS[7], PROMPTS[0], PROMPTS[-1], PROMPTS[7]]
    for suffix in SUFFIXES:
        got, ref = cache.get(picks, suffix=suffix), encoder.encode([p + suffix for p in picks])
        assert got.tokens.dtype == torch.float32 and got.tokens.shape == (4, 16, 32)
        # Built in batches of 8, encoded here in a batch of 4: GEMM blockings (so roundings) may differ by batch
        # size on some x86-64 CPUs, hence a tolerance (measured 0 here).
        assert _close(got.tokens, ref.tokens) and _close(got.pooled, ref.pooled)
    mixed = cache.get(picks[:2], suffix=[", back view", ""])
    assert _close(mixed.pooled, encoder.encode([picks[0] + ", back view", picks[1]]).pooled)
    assert PROMPTS[3] in cache and (PROMPTS[3], ", front view") in cache and (PROMPTS[3], ", side view") not in cache
    reopened = TextEmbeddingCache(tmp_path, encoder.encoder_id, shard_size=16)  # a new process's view
    assert torch.equal(reopened.get(picks).tokens, cache.get(picks).tokens)
    assert cache.get([]).tokens.shape == (0, 16, 32)


def test_missing_prompt_raises_naming_it(tmp_path, encoder):
    cache = TextEmbeddingCache(tmp_path, encoder.encoder_id, shard_size=16)
    cache.build(PROMPTS, encoder.encode_uncached, progress=False)
    with pytest.raises(TextCacheMiss, match="a purple teapot") as info:
        cache.get([PROMPTS[0], "a purple teapot"])
    assert isinstance(info.value, KeyError)
    other = TextEmbeddingCache(tmp_path, "another-encoder", shard_size=16)  # keys include the encoder id
    assert len(other) == 0 and PROMPTS[0] not in other


def test_resume_after_interruption_skips_finished_shards(tmp_path, encoder):
    cache = TextEmbeddingCache(tmp_path, encoder.encoder_id, shard_size=8)
    first = CountingEncoder(encoder, fail_after=3)  # batch 4 → dies inside the second shard
    with pytest.raises(KeyboardInterrupt):
        cache.build(PROMPTS, first, batch_size=4, progress=False)
    assert _shards(cache) == ["shard-00000.safetensors"]
    assert not [p for p in (cache.dir / "shards").iterdir() if ".tmp" in p.name]  # no temporary left behind
    (cache.dir / "shards" / ".shard-00001.k1ll3d.tmp.safetensors").write_bytes(b"junk from a killed run")
    second = CountingEncoder(encoder)
    stats = cache.build(PROMPTS, second, batch_size=4, progress=False)
    assert stats["skipped_shards"] == 1 and stats["encoded"] == len(PROMPTS) - 8
    assert set(second.texts).isdisjoint(PROMPTS[:8])
    got = cache.get(PROMPTS)
    assert _close(got.pooled, encoder.encode(PROMPTS).pooled.half().float(), rtol=2e-3)  # fp16: 1 ulp
    with pytest.raises(UserError, match="different"):
        cache.build(PROMPTS[:-1], encoder.encode_uncached, progress=False)  # another corpus, same directory


def test_ranks_build_disjoint_shards(tmp_path, encoder):
    caches = [TextEmbeddingCache(tmp_path, encoder.encoder_id, shard_size=8) for _ in range(3)]
    counters = [CountingEncoder(encoder) for _ in range(3)]
    built = []
    for rank in range(3):
        before = set(_shards(caches[rank]))
        stats = caches[rank].build(PROMPTS, counters[rank], batch_size=8, rank=rank, world_size=3, progress=False)
        built.append(set(_shards(caches[rank])) - before)
        assert stats["indexed"] == (rank == 2)  # the index appears once every shard exists
    assert all(not (built[a] & built[b]) for a in range(3) for b in range(a + 1, 3))
    assert set().union(*built) == set(_shards(caches[0]))
    assert sorted(t for c in counters for t in c.texts) == sorted(PROMPTS)  # each prompt encoded once
    assert built[1] == {f"shard-{s:05d}.safetensors" for s in range(1, 5, 3)}
    assert torch.equal(caches[0].get(PROMPTS).tokens, caches[2].get(PROMPTS).tokens)


def test_fp16_storage_halves_the_files(tmp_path, encoder):
    sizes = {}
    for dtype in (torch.float16, torch.float32):
        cache = TextEmbeddingCache(tmp_path / str(dtype), encoder.encoder_id, shard_size=64)
        cache.build(PROMPTS, encoder.encode_uncached, dtype=dtype, progress=False)
        sizes[dtype] = (cache.dir / "shards" / "shard-00000.safetensors").stat().st_size
        got, ref = cache.get(PROMPTS), encoder.encode(PROMPTS)
        assert got.tokens.dtype == torch.float32
        assert _close(got.tokens, ref.tokens.to(dtype).float(), rtol=2e-3 if dtype == torch.float16 else 0.0)
        assert cache.meta["dtype"] == str(dtype).removeprefix("torch.")
    assert sizes[torch.float16] < 0.6 * sizes[torch.float32]


def test_incomplete_cache_is_a_user_error(tmp_path, encoder):
    cache = TextEmbeddingCache(tmp_path, encoder.encoder_id, shard_size=8)
    cache.build(PROMPTS, encoder.encode_uncached, rank=0, world_size=2, progress=False)
    with pytest.raises(UserError, match="incomplete"):
        cache.get(PROMPTS[:1])
    assert len(cache) == 0
