"""Choosing the draft length: gamma="auto" picks, each round, the gamma that maximises expected tokens per second.

With a per-draft acceptance probability `alpha` (drafts accepted i.i.d. until the first rejection), a round that
drafts `g` tokens emits on average

    E(g) = 1 + alpha + ... + alpha^g = (1 - alpha^(g+1)) / (1 - alpha)

tokens (the accepted drafts plus the recovered/bonus token) and costs

    T(g) = g * t_draft + t_verify(g + 1)

seconds. `g = 0` is plain decoding by the target alone (one token per `t_verify(1)`), so the rate E/T of the best
g is never below plain decoding *by the model's own estimate*: speculation is switched off where it cannot pay.

Everything is measured online in the same generation: `t_draft` from the drafter's one-token steps, `t_verify(n)`
per verified width n (a line a + b (n - 1) fitted through the widths seen so far), `alpha` from decayed counts of
accepted drafts and first rejections, and the drafter's catch-up cost per token (after plain rounds the drafter has
not seen the emitted tokens; the next speculative round feeds them first).

The model's choice is checked against measured time, and no round may risk more than the time it can afford:
every speculative round's seconds minus what plain decoding would have spent on the tokens it emitted is summed
(`spec_loss_s`, negative while speculation pays), and a round drafting g tokens is only started if its worst case
(every draft rejected: catch-up + g draft steps + the wider verify, for one token) fits in
`probe_budget * elapsed - spec_loss_s`. Where speculation pays, the gains raise that allowance and gamma ramps up
within a few rounds; where it does not, at most `probe_budget` (3%) of the decode time goes to finding out, plus
the one first probe that measures a draft step. While plain decoding wins, speculation is re-probed with one draft
whenever the allowance covers it, so a document where drafting starts to pay later is not missed.
"""
from __future__ import annotations


class _Ema:
    """Exponential moving average that is exact for the first sample."""

    def __init__(self, decay: float):
        self.decay = decay
        self.value: float | None = None
        self.count = 0

    def update(self, x: float) -> None:
        self.count += 1
        self.value = x if self.value is None else self.decay * self.value + (1.0 - self.decay) * x


class SpeculationCostModel:
    """Online estimate of draft/verify step costs and acceptance; `choose()` returns the next round's gamma."""

    def __init__(self, gamma_max: int = 8, *, first_probe: int = 1, decay: float = 0.8,
                 acceptance_decay: float = 0.95, acceptance_prior: tuple[float, float] = (1.0, 2.0),
                 probe_budget: float = 0.03, min_gain: float = 1.05):
        if gamma_max < 0:
            raise ValueError(f"gamma_max must be >= 0, got {gamma_max}")
        self.gamma_max = gamma_max
        self.first_probe = min(first_probe, gamma_max)
        self.decay = decay                        # step costs: follow drift quickly
        self.acceptance_decay = acceptance_decay  # acceptance: per round, a window of ~20 rounds
        self.t_draft = _Ema(decay)
        self.t_verify: dict[int, _Ema] = {}  # verified width n -> seconds
        # Decayed counts: accepted drafts, and trials (accepted + first rejections); prior = (accepted, trials).
        self._accepted, self._trials = acceptance_prior
        self.probe_budget = probe_budget
        # Speculate only for a predicted gain of at least 5%: the estimates come from a few noisy timings, and
        # a marginal predicted gain is as likely a measured loss (seen: 0.92x lc at 4K with gamma ~0.3).
        self.min_gain = min_gain
        self.elapsed_s = 0.0       # decode seconds of every recorded round
        # Seconds the speculative rounds cost beyond plain decoding of the tokens they emitted (negative while
        # speculation pays): measured ground truth that overrides the model's prediction.
        self.spec_loss_s = 0.0
        self._catchup_per_token = _Ema(decay)  # drafter catch-up seconds per fed token
        self.rounds = 0

    # ---- measurements ----
    def record_draft_step(self, seconds: float) -> None:
        """One drafter forward over a single token (catch-up forwards over several tokens are not recorded)."""
        self.t_draft.update(seconds)

    def record_catchup(self, tokens: int, seconds: float) -> None:
        """One drafter forward that fed `tokens` emitted tokens it had not seen (and drafted one)."""
        if tokens > 0:
            self._catchup_per_token.update(seconds / tokens)

    def record_verify(self, width: int, seconds: float) -> None:
        """One target forward over `width` tokens plus the acceptance step."""
        self.t_verify.setdefault(width, _Ema(self.decay)).update(seconds)

    def record_round(self, drafted: int, accepted: int, seconds: float | None = None) -> None:
        """A finished round: drafts proposed and accepted, and its wall time (drafter + target + sampling)."""
        self.rounds += 1
        if seconds is not None:
            self.elapsed_s += seconds
            plain = self.verify_seconds(1)
            if drafted > 0 and plain is not None:
                self.spec_loss_s += seconds - (accepted + 1) * plain  # negative when the round beat plain
        if drafted == 0:
            return
        rejected = 1 if accepted < drafted else 0
        self._accepted = self.acceptance_decay * self._accepted + accepted
        self._trials = self.acceptance_decay * self._trials + accepted + rejected

    # ---- estimates ----
    @property
    def alpha(self) -> float:
        """Per-draft acceptance probability (capped below 1 so E(g) stays finite)."""
        return min(0.99, self._accepted / max(self._trials, 1e-9))

    def verify_seconds(self, width: int) -> float | None:
        """t_verify(width): measured if seen, else from a line through the measured widths (None if none)."""
        seen = {n: e.value for n, e in self.t_verify.items()}
        if width in seen:
            return seen[width]
        if not seen:
            return None
        if len(seen) == 1:
            # One width seen: assume extra tokens cost what a lone token costs on top of a fixed part, the
            # pessimistic end for compute-bound CPUs; the first real measurement of another width replaces it.
            (n0, t0), = seen.items()
            return t0 * (1.0 + 0.15 * (width - n0))
        xs, ys = zip(*sorted(seen.items()))
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        slope = max(slope, 0.0)
        return max(my + slope * (width - mx), 1e-9)

    def expected_tokens(self, gamma: int) -> float:
        a = self.alpha
        return (1.0 - a ** (gamma + 1)) / (1.0 - a)

    def round_seconds(self, gamma: int) -> float | None:
        tv = self.verify_seconds(gamma + 1)
        if tv is None or (gamma > 0 and self.t_draft.value is None):
            return None
        return tv + (gamma * self.t_draft.value if gamma > 0 else 0.0)

    def rate(self, gamma: int) -> float | None:
        """Expected tokens per second when drafting `gamma` tokens per round."""
        t = self.round_seconds(gamma)
        return None if t is None else self.expected_tokens(gamma) / t

    def best_gamma(self) -> int:
        rates = {g: self.rate(g) for g in range(self.gamma_max + 1)}
        known = {g: r for g, r in rates.items() if r is not None}
        if not known:
            return 0
        best = max(known, key=lambda g: (known[g], -g))
        if best > 0 and 0 in known and known[best] < self.min_gain * known[0]:
            return 0
        return best

    def predicted_speedup(self, gamma: int | None = None) -> float | None:
        """Rate at `gamma` (default: the best) over plain decoding's rate, from the current estimates."""
        g = self.best_gamma() if gamma is None else gamma
        base, r = self.rate(0), self.rate(g)
        return None if base is None or r is None else r / base

    def could_pay(self) -> bool:
        """Whether speculation would beat plain decoding by `min_gain` at the measured step costs if every draft
        passed."""
        base = self.rate(0)
        for g in range(1, self.gamma_max + 1):
            t = self.round_seconds(g)
            if base is None or t is None or (g + 1) / t > self.min_gain * base:
                return True
        return False

    # ---- decision ----
    def catchup_seconds(self, pending: int) -> float:
        """What feeding `pending` unseen tokens to the drafter costs: measured per token once seen; before that,
        the marginal cost of one more verified token (the fitted line's slope), capped by a draft step each."""
        if pending <= 1:
            return 0.0  # the last emitted token is fed with the first draft step anyway
        rate = self._catchup_per_token.value
        if rate is None:
            slope = max(self.verify_seconds(2) - self.verify_seconds(1), 0.0)
            rate = min(slope, self.t_draft.value) if self.t_draft.value is not None else slope
        return (pending - 1) * rate

    def worst_loss(self, gamma: int, pending: int = 0) -> float:
        """Seconds a round drafting `gamma` tokens loses against plain decoding if every draft is rejected."""
        return (self.catchup_seconds(pending) + gamma * (self.t_draft.value or 0.0)
                + max(self.verify_seconds(gamma + 1) - self.verify_seconds(1), 0.0))

    def allowance(self) -> float:
        """Seconds speculation may still risk: the budget share of the elapsed time plus what it has gained."""
        return self.probe_budget * self.elapsed_s - self.spec_loss_s

    def choose(self, pending: int = 0) -> int:
        """Gamma for the next round; `pending`: emitted tokens the drafter has not been fed yet. Measures plain
        decoding first, then one probe, then exploits or re-probes only within the allowance."""
        if self.gamma_max == 0:
            return 0
        if 1 not in self.t_verify:
            return 0  # measure plain decoding first: it is the baseline every choice is compared with
        if self.t_draft.value is None:
            return self.first_probe
        allowance = self.allowance()
        best = self.best_gamma()
        if best == 0:
            if not self.could_pay():
                return 0  # a draft step costs too much for any acceptance rate to help: probing only loses time
            best = 1  # plain decoding predicted best: re-probe with one draft, if affordable
        for g in range(best, 0, -1):  # the longest draft up to the best whose worst case is affordable
            if self.worst_loss(g, pending) <= allowance:
                return g
        return 0
