"""Speculative decoding: a small draft model proposes, the target model verifies, the output is the target's.

The chapter *Speculative decoding* (book/06_speculative_decoding.md) explains this module.

Each round (Leviathan et al. 2023, "Fast inference from transformers via speculative decoding",
ICML; Chen et al. 2023, "Accelerating large language model decoding with speculative sampling",
arXiv:2302.01318):

1. the draft model samples ``gamma`` tokens x_1..x_gamma one after the other from its processed
   distributions q_1..q_gamma;
2. the target model reads all of them in **one** forward pass, which gives its processed
   distributions p_1..p_{gamma+1} (p_i: the next token after x_1..x_{i-1});
3. x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)), in order; at the first rejection a
   token is drawn from the residual norm(max(0, p_i - q_i)) and the round ends; if every draft
   token is accepted, a *bonus* token is drawn from p_{gamma+1}.

Each emitted token is then distributed exactly as the target's (temperature and truncation
included: ``llmbook.sampling.probabilities`` is applied identically to both models), whatever the
draft does; a bad draft only costs speed. With ``temperature=0`` verification is greedy: x_i is
accepted iff it is the target's argmax, and a rejection emits the argmax, so the output equals the
target's greedy output token for token. Rejected tokens are removed from both KV caches with
``KVCache.truncate``.

Drafts: another model with the same vocabulary (TinyWorld's draft model); the target's own
first layers with its norm and output layer (:func:`early_exit_draft`, a self-speculative draft
in the style of LayerSkip, Elhoushi et al. 2024, without its training recipe); or no model at all,
:class:`PromptLookupDraft`, which proposes the tokens that followed the last occurrence of the
context's final n-gram (prompt lookup decoding, Saxena 2023). A deterministic proposal is a draft
distribution q that is one-hot, so the same rule keeps the output exact.

One sequence at a time (batch 1): rows of a batch accept different numbers of tokens, which would
make the caches ragged; that is where production engines add most of their complexity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from llmbook.model import CausalLM, KVCache
from llmbook.sampling import _draw, draw, probabilities

__all__ = ["SpeculativeResult", "verify", "speculative_generate", "early_exit_draft", "PromptLookupDraft",
           "expected_tokens_per_round", "expected_speedup"]


@dataclass
class SpeculativeResult:
    """What :func:`speculative_generate` produced.

    ``tokens``: generated ids (a final EOS included). ``proposed[r]``: how many draft tokens round r
    proposed (``gamma`` for a draft model; 0 to ``gamma`` for prompt lookup); ``accepted[r]``: how
    many of them were accepted (each round also emits one target token: the residual
    draw, the greedy correction, or the bonus); ``drafted[r]``: the proposed ids themselves
    (accepted, then the rejected one, then those never examined). ``target_calls``/``draft_calls``: forward passes,
    prefill included. ``finish_reason``: ``'eos'`` or ``'length'``.
    """

    prompt_ids: list[int]
    tokens: list[int]
    gamma: int
    accepted: list[int] = field(default_factory=list)
    proposed: list[int] = field(default_factory=list)
    drafted: list[list[int]] = field(default_factory=list)
    target_calls: int = 0
    draft_calls: int = 0
    finish_reason: str = "length"

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / proposed draft tokens (the "draft acceptance rate" serving
        engines report). Tokens after a round's first rejection count as not accepted although the
        target never examined them, so this is below :attr:`alpha` whenever gamma > 1."""
        proposed = sum(self.proposed)
        return sum(self.accepted) / proposed if proposed else float("nan")

    @property
    def examined(self) -> int:
        """Draft tokens the target examined: every accepted one plus the first rejected one."""
        return sum(min(n + 1, k) for n, k in zip(self.accepted, self.proposed))

    @property
    def alpha(self) -> float:
        """Accepted / examined draft tokens: the estimate of the per-token acceptance probability
        alpha (Leviathan et al. 2023, Definition 3.1) that :func:`expected_tokens_per_round` takes."""
        examined = self.examined
        return sum(self.accepted) / examined if examined else float("nan")

    @property
    def tokens_per_round(self) -> float:
        """Emitted tokens per target verification (1 + accepted per round, before a cut at the end)."""
        return len(self.tokens) / len(self.accepted) if self.accepted else float("nan")


def verify(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, u_accept: torch.Tensor,
           u_token: torch.Tensor, *, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The accept/reject step of speculative sampling, for a batch of independent rounds.

    Args:
        p: (B, gamma + 1, V) the target's processed next-token distributions p_1..p_{gamma+1}.
        q: (B, gamma, V) the draft's distributions q_1..q_gamma the draft tokens were drawn from.
        draft: (B, gamma) the draft tokens x_1..x_gamma.
        u_accept: (B, gamma) uniforms in [0, 1): x_i is accepted when u < p_i(x_i) / q_i(x_i).
        u_token: (B,) uniforms for the one token drawn after the accepted ones (inverse CDF).
        greedy: accept x_i iff it is argmax p_i; the next token is argmax of the p where the
            round stopped (the correction or the bonus). ``q`` and the uniforms are then unused.

    Returns:
        (n, token): (B,) accepted counts in [0, gamma], and (B,) the token emitted after them,
        drawn from norm(max(0, p_{n+1} - q_{n+1})) after a rejection, from p_{gamma+1} when
        every draft token was accepted.
    """
    if p.ndim != 3 or q.ndim != 3 or draft.ndim != 2:
        raise ValueError("p must be (B, gamma+1, V), q (B, gamma, V) and draft (B, gamma)")
    b, g1, v = p.shape
    gamma = g1 - 1
    if q.shape != (b, gamma, v) or draft.shape != (b, gamma):
        raise ValueError(f"shapes disagree: p {tuple(p.shape)}, q {tuple(q.shape)}, draft {tuple(draft.shape)}")
    rows = torch.arange(b, device=p.device)
    if greedy:
        best = p.argmax(dim=-1)  # (B, gamma+1)
        ok = best[:, :gamma] == draft
    else:
        p_x = p[:, :gamma].gather(-1, draft[..., None])[..., 0]  # (B, gamma)
        q_x = q.gather(-1, draft[..., None])[..., 0]
        # u < p/q, written without dividing (q_x > 0 for a token the draft drew).
        ok = u_accept * q_x < p_x
    # n = index of the first rejection (gamma when none).
    rejected = ~ok
    if gamma == 0:  # nothing proposed: an ordinary decoding step
        n = torch.zeros_like(rows)
    else:
        n = torch.where(rejected.any(dim=1), rejected.float().argmax(dim=1), torch.full_like(rows, gamma))
    if greedy:
        return n, best[rows, n]
    stop_p = p[rows, n]  # (B, V): p_{n+1}
    q_pad = torch.cat([q, torch.zeros(b, 1, v, dtype=q.dtype, device=q.device)], dim=1)
    residual = (stop_p - q_pad[rows, n]).clamp_min(0)  # equals p_{gamma+1} when n == gamma
    # p == q exactly would leave no residual; a rejection cannot happen then, but rounding can.
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, stop_p)
    token = _draw(residual, u_token)  # inverse CDF, as every draw in llmbook.sampling
    return n, token


def early_exit_draft(model: CausalLM, layers: int) -> CausalLM:
    """A draft that is ``model``'s first ``layers`` decoder layers, then its final norm and output
    layer: no new weights (every module is shared), and a KV cache of ``layers`` layers."""
    n = model.config.num_hidden_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers < n:
        raise ValueError(f"layers must be an integer in [1, {n - 1}], got {layers!r}")
    draft = CausalLM(dataclasses.replace(model.config, num_hidden_layers=layers), device="meta")
    draft.model.embed_tokens = model.model.embed_tokens
    draft.model.layers = nn.ModuleList(list(model.model.layers[:layers]))
    draft.model.norm = model.model.norm
    draft.model.rotary_emb = model.model.rotary_emb
    draft.lm_head = model.lm_head
    draft.generation_config = model.generation_config
    return draft.eval()


class PromptLookupDraft:
    """Propose the tokens that followed the latest earlier occurrence of the context's last n-gram.

    Tries n = ``max_ngram`` down to ``min_ngram``; proposes nothing when no n-gram recurs (the round
    is then an ordinary decoding step). Its q is one-hot on each proposed token. ``latest=False``
    takes the earliest occurrence instead, as transformers' ``prompt_lookup_num_tokens`` does (with
    ``max_ngram=2``, its default), so the two propose the same tokens.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, latest: bool = True) -> None:
        for name, v in (("max_ngram", max_ngram), ("min_ngram", min_ngram)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if min_ngram > max_ngram:
            raise ValueError(f"min_ngram ({min_ngram}) must be <= max_ngram ({max_ngram})")
        if not isinstance(latest, bool):
            raise ValueError(f"latest must be True or False, got {latest!r}")
        self.max_ngram, self.min_ngram, self.latest = max_ngram, min_ngram, latest

    def propose(self, context: Sequence[int], gamma: int) -> list[int]:
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            tail = list(context[-n:])
            starts = range(len(context) - n - 1, -1, -1) if self.latest else range(len(context) - n)
            for start in starts:  # an earlier occurrence with at least one token after it
                if list(context[start:start + n]) == tail:
                    return list(context[start + n:start + n + gamma])
        return []

    def __repr__(self) -> str:
        return (f"PromptLookupDraft(max_ngram={self.max_ngram}, min_ngram={self.min_ngram}, "
                f"latest={self.latest})")


def _check_alpha_gamma(alpha: float, gamma: int) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma must be an integer >= 1, got {gamma!r}")


def expected_tokens_per_round(alpha: float, gamma: int) -> float:
    """Tokens one verification emits on average when each draft token is accepted independently
    with probability ``alpha``: (1 - alpha^(gamma+1)) / (1 - alpha) (Leviathan et al. 2023, eq. 1);
    gamma + 1 at alpha = 1."""
    _check_alpha_gamma(alpha, gamma)
    return float(gamma + 1) if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_speedup(alpha: float, gamma: int, cost_ratio: float) -> float:
    """Wall-clock speed-up over plain decoding when a draft step costs ``cost_ratio`` (c) target steps
    and a verification costs one: tokens per round / (gamma c + 1) (Leviathan et al. 2023, Theorem
    3.8). Below 1, speculation loses."""
    _check_alpha_gamma(alpha, gamma)
    if isinstance(cost_ratio, bool) or not isinstance(cost_ratio, (int, float)) or cost_ratio < 0:
        raise ValueError(f"cost_ratio must be a number >= 0, got {cost_ratio!r}")
    return expected_tokens_per_round(alpha, gamma) / (gamma * cost_ratio + 1)


def _check_pair(target: CausalLM, draft: CausalLM | PromptLookupDraft) -> None:
    if not isinstance(target, CausalLM):
        raise ValueError(f"target must be a llmbook CausalLM, got {type(target).__name__}")
    if isinstance(draft, PromptLookupDraft):
        return
    if not isinstance(draft, CausalLM):
        raise ValueError(f"draft must be a llmbook CausalLM or a PromptLookupDraft, got {type(draft).__name__}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"target and draft must share a vocabulary: {target.config.vocab_size} vs "
                         f"{draft.config.vocab_size} embeddings")
    for name in ("bos_token_id", "eos_token_id"):
        # Models do not carry their tokenizer; a different special-token id is the sign of one.
        t_id, d_id = getattr(target.config, name), getattr(draft.config, name)
        if t_id is not None and d_id is not None and t_id != d_id:
            raise ValueError(f"target and draft must share a tokenizer: their {name} differ "
                             f"({t_id} vs {d_id})")
    if target.device != draft.device:
        raise ValueError(f"target and draft must be on one device: {target.device} vs {draft.device}")


@torch.no_grad()
def _feed(model: CausalLM, cache: KVCache, ids: list[int]) -> torch.Tensor:
    """Run ``ids`` through ``model`` after what ``cache`` holds; (len(ids), V) float32 logits."""
    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    return model(x, cache=cache)[0].float()


class _ModelDrafter:
    """A draft model with its own KV cache and the tokens it has not read yet."""

    def __init__(self, model: CausalLM, prompt: list[int], length: int, settings: dict, greedy: bool,
                 generator: torch.Generator) -> None:
        self.model, self.settings, self.greedy, self.generator = model, settings, greedy, generator
        self.cache = model.new_cache(1, length)
        self.calls = 0
        if len(prompt) > 1:
            _feed(model, self.cache, prompt[:-1])
            self.calls += 1
        self.pending = [prompt[-1]]

    def propose(self, context: list[int], gamma: int) -> tuple[list[int], torch.Tensor]:
        self.start = self.cache.length
        q_rows, drafted = [], []
        logits = _feed(self.model, self.cache, self.pending)[-1:]
        self.calls += 1
        for i in range(gamma):
            q_i = probabilities(logits, **self.settings)[0]  # (V,)
            x = int(q_i.argmax()) if self.greedy else int(draw(q_i[None], generator=self.generator)[0])
            q_rows.append(q_i)
            drafted.append(x)
            if i < gamma - 1:
                logits = _feed(self.model, self.cache, [x])
                self.calls += 1
        return drafted, torch.stack(q_rows)

    def commit(self, drafted: list[int], n: int, token: int) -> None:
        """Keep the accepted tokens in the cache; the draft never read the last draft token."""
        self.cache.truncate(min(self.cache.length, self.start + len(self.pending) + n))
        self.pending = ([drafted[-1]] if n == len(drafted) else []) + [token]


@torch.no_grad()
def speculative_generate(
    target: CausalLM,
    draft: CausalLM | PromptLookupDraft,
    prompt_ids: Sequence[int],
    *,
    gamma: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int = 0,
    eos_token_ids: Sequence[int] | int | None = None,
) -> SpeculativeResult:
    """Continue ``prompt_ids`` with ``target``'s distribution, drafting up to ``gamma`` tokens per round.

    ``draft``: a model with the target's vocabulary (e.g. :func:`early_exit_draft`) or a
    :class:`PromptLookupDraft`. The sampling settings are applied identically to the target and a
    draft model (``llmbook.sampling.probabilities``). ``temperature=0``: greedy verification (the
    target's greedy output, token for token). Random numbers come from one CPU ``torch.Generator``
    seeded with ``seed``. Raises ``ValueError`` for models that do not share a vocabulary or a
    device, ``gamma < 1`` and bad settings.
    """
    _check_pair(target, draft)
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma must be an integer >= 1, got {gamma!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    prompt = [int(t) for t in prompt_ids]
    vocab = target.config.vocab_size
    if not prompt or min(prompt) < 0 or max(prompt) >= vocab:
        raise ValueError(f"prompt_ids must be a non-empty list of ids in [0, {vocab - 1}]")
    eos = set() if eos_token_ids is None else {eos_token_ids} if isinstance(eos_token_ids, int) else set(eos_token_ids)
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    probabilities(torch.zeros(1, 2), **settings)  # validate before any forward pass
    greedy = temperature == 0
    models = [target] + ([draft] if isinstance(draft, CausalLM) else [])
    context = min(m.config.max_position_embeddings for m in models)
    length = len(prompt) + max_new_tokens + gamma + 1
    if length > context:
        raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) + gamma + 1 exceeds "
                         f"the models' context ({context})")

    result = SpeculativeResult(prompt_ids=prompt, tokens=[], gamma=gamma)
    if max_new_tokens == 0:
        return result
    gen = torch.Generator().manual_seed(seed)
    t_cache = target.new_cache(1, length)
    if len(prompt) > 1:  # the last prompt token is read with the first round's tokens
        _feed(target, t_cache, prompt[:-1])
        result.target_calls += 1
    t_pending = [prompt[-1]]  # tokens the target has not read yet
    drafter = _ModelDrafter(draft, prompt, length, settings, greedy, gen) if isinstance(draft, CausalLM) else None

    while len(result.tokens) < max_new_tokens:
        context_ids = prompt + result.tokens
        # 1. Draft: k <= gamma tokens and the distributions they were drawn from (one-hot for lookup).
        if drafter is not None:
            drafted, q = drafter.propose(context_ids, gamma)
        else:
            drafted = draft.propose(context_ids, gamma)
            q = torch.zeros(len(drafted), vocab, device=target.device)
            q[torch.arange(len(drafted)), torch.tensor(drafted, dtype=torch.long)] = 1.0
        k = len(drafted)
        # 2. Verify: the target reads its pending token and every draft token at once.
        t_start = t_cache.length
        p_rows = probabilities(_feed(target, t_cache, t_pending + drafted)[-(k + 1):], **settings)
        result.target_calls += 1
        # 3. Accept or reject (uniforms drawn even when greedy would not need them: same stream).
        u_accept = torch.rand(1, k, generator=gen).to(p_rows.device)
        u_token = torch.rand(1, generator=gen).to(p_rows.device)
        n, token = verify(p_rows[None], q.to(p_rows)[None], torch.tensor([drafted], dtype=torch.long,
                          device=p_rows.device).reshape(1, k), u_accept, u_token, greedy=greedy)
        n, token = int(n[0]), int(token[0])
        result.accepted.append(n)
        result.proposed.append(k)
        result.drafted.append(list(drafted))
        # 4. Roll back what was read past the accepted tokens.
        t_cache.truncate(t_start + len(t_pending) + n)
        t_pending = [token]
        if drafter is not None:
            drafter.commit(drafted, n, token)
        for t in drafted[:n] + [token]:
            result.tokens.append(t)
            if t in eos:
                result.finish_reason = "eos"
                break
            if len(result.tokens) == max_new_tokens:
                break
        if result.finish_reason == "eos":
            break
    result.draft_calls = drafter.calls if drafter is not None else 0
    return result
