"""Host syncs per step: one per speculative round (the accepted count, read with the tokens), one per plain
decode step (the sampled token), none in Model.forward on engine tokens.

A CPU proxy of a GPU's device-to-host syncs (step_counters.HostSyncCounter: aten._local_scalar_dense and every
Tensor method that hands data to the host). The count does not depend on the model's size: a random-weight
Llama from the test fixtures (transformers' own config and weights, 2 layers) is target and drafter.
Also: the drafts' on-device sampler (inverse CDF) follows its distribution.
"""
from __future__ import annotations

import pytest
import torch

from engine_fixtures import tiny_llama_dir
from rapid_engine.models import load_model
from rapid_engine.sampling import generate_ids
from rapid_engine.speculative import DraftState, SamplingParams, sample_inverse_cdf, speculative_round
from step_counters import HostSyncCounter

PROMPT = [1, 50, 34, 28, 41, 31, 25, 134, 28, 33, 2]


@pytest.fixture(scope="module")
def model(tmp_path_factory):  # peaked next-token distributions: drafts are often accepted
    return load_model(tiny_llama_dir(tmp_path_factory.mktemp("tiny-syncs"), init_range=0.3))


def test_forward_on_engine_tokens_does_not_sync(model):
    cache = model.new_cache(64)
    model.prefill(torch.tensor([PROMPT]), cache)
    with HostSyncCounter() as c:
        model.forward(torch.tensor([[42, 43, 44]]), cache, ids_checked=True)
    assert c.syncs == 0, (c.host_reads, c.local_scalar_dense)
    with HostSyncCounter() as c:  # a user's ids are still checked (two reads: min and max)
        model.forward(torch.tensor([[42]]), cache)
    assert c.syncs == 2, (c.host_reads, c.local_scalar_dense)


PARAMS = {"greedy": SamplingParams(), "greedy-rapid": SamplingParams(eta=1.0),
          "sampled-rapid": SamplingParams(temperature=0.8, top_k=50, top_p=0.9, eta=10.0)}


@pytest.mark.parametrize("name", list(PARAMS))
@pytest.mark.parametrize("gamma", [0, 1, 4])
def test_one_host_sync_per_round(model, name, gamma):
    params = PARAMS[name]
    t_cache, d_cache = model.new_cache(128), model.new_cache(128)
    model.prefill(torch.tensor([PROMPT[:-1]]), t_cache)
    model.prefill(torch.tensor([PROMPT[3:-1]]), d_cache)  # the drafter sees a shorter context
    drafter = DraftState(model, d_cache, [PROMPT[-1]])
    gen = torch.Generator().manual_seed(7)
    last, emitted = PROMPT[-1], 0
    for _ in range(4):
        with HostSyncCounter() as c:
            r = speculative_round(model, t_cache, last, drafter, gamma, params, generator=gen)
        assert c.syncs == 1, f"round with gamma={gamma}: {c.host_reads} host reads, " \
                             f"{c.local_scalar_dense} _local_scalar_dense"
        assert 0 <= r.accepted <= gamma and len(r.tokens) == r.accepted + 1
        assert all(0 <= t < model.config.vocab_size for t in r.tokens)
        last, emitted = r.tokens[-1], emitted + len(r.tokens)
    assert t_cache.length == len(PROMPT) - 1 + emitted


def test_plain_decoding_syncs_once_per_token(model):
    def syncs(n):
        with HostSyncCounter() as c:
            out = list(generate_ids(model, PROMPT, max_new_tokens=n, stop_ids=[]))
        assert len(out) == n
        return c.syncs
    assert syncs(6) - syncs(3) == 3  # the prompt's id check is once per request; each token is one read


def test_inverse_cdf_sampler_follows_its_distribution():
    probs = torch.tensor([0.05, 0.0, 0.3, 0.15, 0.0, 0.25, 0.25]) * 3  # unnormalized, two ids without mass
    n = 200_000
    u = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    draws = sample_inverse_cdf(probs.expand(n, -1), u)
    counts = torch.bincount(draws, minlength=7).double()
    assert counts[1] == 0 and counts[4] == 0
    p = probs.double() / probs.sum()
    mask = p > 0
    chi2 = float((((counts - n * p) ** 2)[mask] / (n * p[mask])).sum())
    assert chi2 < 20.5, chi2  # 5 degrees of freedom: p = 0.001
    # u at the top of [0, 1) lands on the last id with mass, never past it or on a zero-mass id
    top = torch.tensor([1 - 2**-53], dtype=torch.float64)
    tail_zero = torch.tensor([0.2, 0.8, 0.0, 0.0])
    assert int(sample_inverse_cdf(tail_zero, top[0])) == 1
    assert int(sample_inverse_cdf(tail_zero, torch.tensor(0.0, dtype=torch.float64))) == 0
