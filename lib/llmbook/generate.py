"""The generation loop: prompt(s) in, text out.

One prefill pass runs every prompt through the model and fills the KV cache; then each step
feeds only the newly chosen token (O(1) new tokens per step). Prompts of different lengths
share a batch by left padding: the model masks the padding and counts positions over real
tokens only, so each row generates what it would alone.

Each step turns the last logits into a distribution with ``llmbook.sampling`` (temperature,
top-k, top-p, min-p) and draws from it by inverse CDF, one uniform number per row from that
row's own seeded ``torch.Generator``: the same seed gives the same text, and a row's tokens
depend only on its prompt and its seed, not on the other prompts of the batch (row 0 of a
batch seeded ``s`` is the prompt alone with seed ``s``). The result keeps the probability of
every chosen token, and optionally the whole processed distribution of the first steps, for
plotting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from llmbook.constrained import ENGINES, GrammarConstraint, grammar_constraint
from llmbook.model import CausalLM
from llmbook.sampling import draw, probabilities, row_generators
from llmbook.tokenizer import Tokenizer

__all__ = ["GenerationResult", "generate", "generate_ids", "next_token_logits"]

FINISH_EOS, FINISH_STOP, FINISH_LENGTH = "eos", "stop", "length"


@dataclass
class GenerationResult:
    """What a generation produced, one entry per prompt.

    ``tokens[i]``: generated ids (the EOS id is included when the row ended on it).
    ``texts[i]``: their text, without EOS and cut before a stop string ('' from ``generate_ids``),
    decoded in the context of the prompt: ``decode(prompt_ids[i]) + texts[i] == decode(prompt_ids[i] + ids)``
    (see :func:`generate`).
    ``token_probs[i][t]``: probability of the token chosen at step t under the processed distribution.
    ``distributions``: (batch, steps, vocab) float32 CPU tensor of the processed distributions of the
    first ``record_distributions`` steps (rows that had finished hold the distribution they were not sampled from).
    ``finish_reasons[i]``: ``'eos'``, ``'stop'`` (a stop string) or ``'length'`` (max_new_tokens reached).
    ``complete[i]`` (constrained generation only, else None): the row's text is a whole sentence of the
    grammar. A row cut by ``max_new_tokens`` before its JSON closes is *incomplete*, never valid.
    """

    prompt_ids: list[list[int]]
    tokens: list[list[int]]
    token_probs: list[list[float]]
    finish_reasons: list[str]
    texts: list[str] = field(default_factory=list)
    distributions: torch.Tensor | None = None
    complete: list[bool] | None = None

    @property
    def text(self) -> str:
        """The text of the first (often only) prompt."""
        return self.texts[0]


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _suppress_mask(ids: Sequence[int] | None, vocab: int, device: torch.device) -> torch.Tensor | None:
    """(V,) bool mask of ``suppress_token_ids`` (None when there are none)."""
    if ids is None:
        return None
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, set, frozenset)):
        raise ValueError(f"suppress_token_ids must be a list of token ids or None, got {type(ids).__name__}")
    ids = list(ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab:
            raise ValueError(f"suppress_token_ids must be token ids in [0, {vocab - 1}], got {i!r}")
    if len(set(ids)) >= vocab:
        raise ValueError(f"suppress_token_ids must leave at least one of the {vocab} ids to sample")
    if not ids:
        return None
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[ids] = True
    return mask.to(device)


# A step hook sees (step, chosen ids of all rows as a list, rows still running) and returns the
# rows that must stop now (e.g. a stop string appeared). Used by `generate` for text-level logic.
Constraint = GrammarConstraint
StepHook = Callable[[int, list[int], list[bool]], Sequence[int]]


@torch.inference_mode()
def generate_ids(
    model: CausalLM,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int | Sequence[int] | None = 0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    eos_token_ids: Sequence[int] | int | None = None,
    record_distributions: int = 0,
    on_step: StepHook | None = None,
    suppress_token_ids: Sequence[int] | None = None,
    constraint: Constraint | None = None,
    allow_extrapolation: bool = False,
) -> GenerationResult:
    """Generate from token-id prompts (a list of lists); the loop behind :func:`generate`.

    Randomness (temperature > 0; greedy uses none). Each row draws one uniform number per step
    from its own CPU generator and turns it into a token by inverse CDF over its own
    distribution, so a row's tokens are a function of its prompt and its generator alone:

    - ``seed`` an int: row i's generator is seeded ``row_seeds(seed, batch)[i]`` (row 0 gets
      ``seed`` itself, the others SplitMix64 mixes of it). Copies of one prompt in a batch
      therefore draw different samples, and row 0 draws what the prompt alone draws.
    - ``seed`` a list of ints, one per prompt: used as they are; ``seed=[s]`` reproduces alone
      any row that had seed ``s``.
    - ``seed=None``: torch's global CPU generator (seed it with ``torch.manual_seed``).
    - ``generator`` (``seed`` is then ignored): a list of one ``torch.Generator`` per prompt,
      with the same per-row promise, or a single generator, whose next ``batch`` numbers go
      to the rows in order at each step: the whole batch reproduces from the generator's
      state, but a row's tokens depend on its position and on the batch size.

    Rows stop at any of ``eos_token_ids`` or after ``max_new_tokens``.
    ``suppress_token_ids``: ids never to sample (their logits are set to -inf before the sampler
    sees them, as transformers' ``suppress_tokens``); :func:`generate` passes the ids its
    tokenizer cannot decode.
    ``allow_extrapolation``: let prompt + new tokens run past ``max_position_embeddings``
    (refused by default; see :meth:`llmbook.model.CausalLM.forward`).
    ``constraint``: a grammar constraint (:func:`llmbook.constrained.grammar_constraint`): at each
    step the logits of tokens the grammar does not allow become -inf *before* temperature and
    truncation, EOS is allowed only where the text is complete, and ``result.complete`` says which
    rows are.
    """
    if not isinstance(model, CausalLM):
        raise ValueError(f"model must be a llmbook CausalLM, got {type(model).__name__}")
    if isinstance(prompt_ids, torch.Tensor):
        prompt_ids = prompt_ids.tolist()
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence) or len(prompt_ids) == 0:
        raise ValueError("prompt_ids must be a non-empty list of token-id lists")
    prompts = [[int(t) for t in p] for p in prompt_ids]
    vocab, context = model.config.vocab_size, model.config.max_position_embeddings
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if min(p) < 0 or max(p) >= vocab:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab - 1}]")
    _check_int("max_new_tokens", max_new_tokens, 0)
    _check_int("record_distributions", record_distributions, 0)
    longest = max(len(p) for p in prompts)
    if not isinstance(allow_extrapolation, bool):
        raise ValueError(f"allow_extrapolation must be True or False, got {allow_extrapolation!r}")
    if longest + max_new_tokens > context and not allow_extrapolation:
        raise ValueError(
            f"prompt length ({longest} tokens) + max_new_tokens ({max_new_tokens}) must be <= "
            f"max_position_embeddings ({context}); pass allow_extrapolation=True to run positions "
            "the model was never trained on"
        )
    if eos_token_ids is None:
        eos = []
    else:
        eos = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    for e in eos:
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < vocab:
            raise ValueError(f"eos_token_ids must be token ids in [0, {vocab - 1}], got {eos_token_ids!r}")
    batch = len(prompts)
    generators: torch.Generator | list[torch.Generator] | None
    if generator is not None:
        if isinstance(generator, torch.Generator):
            generators = generator
        elif isinstance(generator, Sequence) and len(generator) == batch and all(
                isinstance(g, torch.Generator) for g in generator):
            generators = list(generator)
        else:
            got = f"a list of {len(generator)}" if isinstance(generator, (list, tuple)) else type(generator).__name__
            raise ValueError(f"generator must be a torch.Generator, a list of one per prompt ({batch}) or None, got {got}")
    elif seed is None:
        generators = None
    elif isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        if len(seed) != batch:
            raise ValueError(f"seed must be an int or a list of one int per prompt ({batch}), got {len(seed)} seeds")
        generators = row_generators(list(seed), batch)
    else:
        generators = row_generators(seed, batch)
    suppressed = _suppress_mask(suppress_token_ids, vocab, model.device)
    if constraint is not None:
        if not (hasattr(constraint, "masks") and hasattr(constraint, "advance")):
            raise ValueError(f"constraint must be a grammar constraint, got {type(constraint).__name__}")
        constraint.start(batch, eos)
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    # Validate the sampler settings now, not after an expensive prefill.
    probabilities(torch.zeros(1, 2), **settings)

    device = model.device
    result = GenerationResult(prompt_ids=prompts, tokens=[[] for _ in prompts],
                              token_probs=[[] for _ in prompts], finish_reasons=[FINISH_LENGTH] * batch)
    if max_new_tokens == 0:
        if constraint is not None:
            result.complete = constraint.complete()
        return result

    # Left-pad to a rectangle; the pad value is never attended to (token 0 is as good as any).
    ids = torch.zeros(batch, longest, dtype=torch.long)
    mask = torch.zeros(batch, longest, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = True
    ids, mask = ids.to(device), mask.to(device)
    padded = not bool(mask.all())

    # The cache carries the extrapolation opt-in to every pass that writes into it.
    cache = model.new_cache(batch, longest + max_new_tokens, allow_extrapolation=allow_extrapolation)
    logits = model(ids, cache=cache, attention_mask=mask if padded else None, last_only=True)[:, -1]

    chosen = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
    chosen_p = torch.zeros(batch, max_new_tokens, dtype=torch.float32, device=device)
    recorded: list[torch.Tensor] = []
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    running = [True] * batch
    last_step = [max_new_tokens - 1] * batch  # index of each row's final token

    for step in range(max_new_tokens):
        scores = logits.float()  # sample in float32 whatever the model's dtype
        if suppressed is not None:
            scores = scores.masked_fill(suppressed, float("-inf"))
        if constraint is not None:
            allowed = constraint.masks(running).to(device)  # (B, V) bool
            dead = [i for i, ok in enumerate(allowed.any(dim=-1).tolist()) if not ok]
            if dead:
                raise RuntimeError(f"row {dead[0]}: the grammar allows no token of this vocabulary here")
            scores = scores.masked_fill(~allowed, float("-inf"))
        probs = probabilities(scores, **settings)  # (B, V): the distribution `token` is drawn from
        # Greedy is the argmax (first index on ties), the one token of the one-hot probs.
        token = scores.argmax(dim=-1) if temperature == 0 else draw(probs, generator=generators)  # (B,)
        chosen[:, step] = token
        chosen_p[:, step] = probs.gather(1, token[:, None])[:, 0]
        if step < record_distributions:
            recorded.append(probs.cpu())

        # Rows that end now: EOS, or whatever the hook (stop strings) says.
        token_list = token.tolist()
        if constraint is not None:
            constraint.advance(token_list, running)
        ended = []
        if eos:
            ended = [i for i, hit in enumerate(torch.isin(token, eos_t).tolist()) if hit and running[i]]
            for i in ended:
                result.finish_reasons[i] = FINISH_EOS
        for i in ended:
            running[i], last_step[i] = False, step
        if on_step is not None:
            for i in on_step(step, token_list, list(running)):
                if running[i]:
                    running[i], last_step[i] = False, step
                    result.finish_reasons[i] = FINISH_STOP
        if not any(running) or step == max_new_tokens - 1:
            break
        # Finished rows keep decoding (the batch stays rectangular); their tokens are discarded.
        logits = model(token[:, None], cache=cache)[:, -1]

    chosen_list, p_list = chosen.tolist(), chosen_p.tolist()
    for i in range(batch):
        result.tokens[i] = chosen_list[i][: last_step[i] + 1]
        result.token_probs[i] = p_list[i][: last_step[i] + 1]
    if recorded:
        result.distributions = torch.stack(recorded, dim=1)  # (B, N, V)
    if constraint is not None:
        result.complete = constraint.complete()
    return result


def _continuation(tokenizer: Tokenizer, prompt: list[int], prompt_text: str, generated: list[int]) -> str:
    """The text ``generated`` adds after ``prompt``: ``decode(prompt + generated)`` after ``decode(prompt)``.

    Decoding the generated ids alone would lose what only the context decides: a SentencePiece
    decoder drops the leading space of the first token ('▁cat' alone is 'cat', after 'The' it is
    ' cat'). If the generated ids rewrite the end of the prompt's text (a SentencePiece prompt that
    ends in byte tokens, continued by byte tokens into invalid UTF-8), the text starts where the
    two decodings part.
    """
    full = tokenizer.decode(prompt + generated)
    if full.startswith(prompt_text):
        return full[len(prompt_text):]
    return full[len(os.path.commonprefix([prompt_text, full])):]


class _TextTracker:
    """Per-row text (decoded in the context of the prompt), stop strings, and streaming of final pieces."""

    def __init__(self, tokenizer: Tokenizer, prompts: list[list[int]], stop: list[str], eos: set[int],
                 stream: Callable[[int, str], None] | None) -> None:
        self.tokenizer, self.stop, self.eos, self.stream = tokenizer, stop, eos, stream
        self.prompts = prompts
        self.prompt_texts = [tokenizer.decode(p) for p in prompts]
        self.byte_ids = tokenizer.byte_fallback_ids
        self.ids: list[list[int]] = [[] for _ in prompts]
        self.texts = [""] * len(prompts)
        self.emitted = [0] * len(prompts)  # characters already passed to `stream`

    def _emit(self, row: int, upto: int) -> None:
        if self.stream is not None and upto > self.emitted[row]:
            self.stream(row, self.texts[row][self.emitted[row]:upto])
            self.emitted[row] = upto

    def _text(self, row: int, generated: list[int]) -> str:
        return _continuation(self.tokenizer, self.prompts[row], self.prompt_texts[row], generated)

    def _final_length(self, row: int, text: str) -> int:
        """How much of ``text`` no later token can change."""
        end = len(text)
        if self.byte_ids:
            # A run of byte-fallback tokens decodes as a whole (one invalid byte turns every byte of
            # the run into U+FFFD), so the text of a trailing run is final only once the run ends.
            both = self.prompts[row] + self.ids[row]
            j = len(both)
            while j > 0 and both[j - 1] in self.byte_ids:
                j -= 1
            if j < len(both):
                g = j - len(self.prompts[row])
                before = self._text(row, self.ids[row][:g]) if g > 0 else ""
                end = len(os.path.commonprefix([before, text]))
        while end > 0 and text[end - 1] == "\ufffd":  # an incomplete UTF-8 character (byte-level BPE)
            end -= 1
        return end

    def __call__(self, step: int, tokens: list[int], running: list[bool]) -> list[int]:
        stopped = []
        for row, (token, alive) in enumerate(zip(tokens, running)):
            if not alive and token in self.eos and len(self.ids[row]) == step:
                self._emit(row, len(self.texts[row]))  # ended on EOS just now: flush what was held back
            if not alive or len(self.ids[row]) != step:
                continue
            self.ids[row].append(token)
            text = self._text(row, self.ids[row])
            self.texts[row] = text
            cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.texts[row] = text[:cut]
                self._emit(row, cut)
                stopped.append(row)
                continue
            # Hold back what may still change and any tail that may grow into a stop string.
            end = self._final_length(row, text)
            hold = 0
            for s in self.stop:
                for k in range(min(len(s) - 1, end), 0, -1):  # longest tail of the final text that starts s
                    if text[end - k:end] == s[:k]:
                        hold = max(hold, k)
                        break
            self._emit(row, end - hold)
        return stopped

    def finish(self) -> None:
        for row in range(len(self.ids)):
            self._emit(row, len(self.texts[row]))


def _undecodable_ids(tokenizer: Tokenizer, vocab: int) -> list[int]:
    """Ids of a ``vocab``-row model that ``tokenizer`` cannot decode: its holes and every id past it."""
    size = tokenizer.vocab_size
    return sorted(i for i in tokenizer.unassigned_ids if i < vocab) + list(range(size, vocab))


def generate(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompts: str | Sequence[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    stop: Sequence[str] = (),
    stop_at_eos: bool = True,
    add_bos: bool | None = None,
    stream: Callable[[int, str], None] | None = None,
    record_distributions: int = 0,
    json_schema: dict | None = None,
    grammar: object | None = None,
    grammar_cache: bool = True,
    grammar_prefix: str = "",
    grammar_engine: str = "llmbook",
    allow_extrapolation: bool = False,
) -> GenerationResult:
    """Continue ``prompts`` (a string or a list of strings) with ``model``; returns a :class:`GenerationResult`.

    ``stop``: strings that end a row (the text is cut before them). ``stop_at_eos``: end a row at
    any EOS: the tokenizer's, config.json's and every id ``model.generation_config`` (the
    checkpoint's generation_config.json) lists. The sampling arguments are always this function's
    own defaults; a checkpoint's recommended ones are ``model.generation_config.sampling_kwargs()``
    (transformers applies them silently; here they must be passed). ``add_bos`` (default: what the tokenizer does by default) puts
    BOS in front of each prompt. ``stream(row, piece)`` is called with each new piece of text as
    soon as it is final (incomplete characters and possible stop-string prefixes are held back).
    Same ``seed`` (or generator state), same output.

    **Text.** With ``P = result.prompt_ids[i]`` (BOS included when added) and ``G`` the generated
    ids without a final EOS, ``result.texts[i]`` is what ``G`` adds to the text:
    ``decode(P) + texts[i] == decode(P + G)``, where ``decode`` is ``tokenizer.decode`` with
    special tokens kept as the tokenizer writes them (a generated special token that is not an
    EOS shows, e.g. ``'<|eot|>'``). Without BOS, for a tokenizer that round-trips the prompt,
    ``decode(P)`` is the prompt, so ``prompt + texts[i] == decode(P + G)``: the text keeps the
    leading space that a SentencePiece decoder drops from a first token ('▁cat' after 'The' is
    ' cat'). (The one exception: a SentencePiece prompt ending in byte-fallback tokens, continued
    by byte tokens that make that run invalid UTF-8, changes the prompt's own last characters;
    the text then starts where ``decode(P)`` and ``decode(P + G)`` part.) A stop string is
    searched in this text after every token and the text is cut before its first occurrence, so
    ``stop=[" cat"]`` works; the pieces passed to ``stream`` always concatenate to ``texts[i]``.

    **Ids the tokenizer cannot write.** A model may have more embedding rows than the tokenizer
    has tokens (Qwen2: 151,936 rows, 151,646 tokens; many fine-tunes pad to a multiple of 64).
    Those ids, and ids in a hole of the vocabulary, have no text, so they are never sampled: their
    logits are -inf before the sampler (``token_probs`` and ``distributions`` are over the tokens
    that remain). EOS ids are kept even there: they end a row and are never decoded.
    (transformers samples them and decodes them to ''.)

    **Constrained output.** ``json_schema=`` (a JSON-Schema subset) or ``grammar=`` (``"json"`` or a
    :class:`llmbook.constrained.Grammar`) masks every token the grammar does not allow, step by
    step; EOS is allowed only where the text is complete. ``result.complete[i]`` is True when row
    i's text is a whole sentence of the grammar; a row that reaches ``max_new_tokens`` first is
    incomplete. ``grammar_cache=False`` computes each mask from scratch (the slow reference).
    ``grammar_prefix``: the start of the constrained text that the prompts already end with (a
    prompt ``'{"name": "'`` is continued inside the name's string). ``grammar_engine``: ``"llmbook"``
    (:mod:`llmbook.constrained`) or ``"xgrammar"`` (the production engine, a dev dependency, on the
    same schema; see :func:`llmbook.constrained.grammar_constraint`). ``allow_extrapolation``: run
    past ``max_position_embeddings`` (refused by default; see :func:`generate_ids`).
    """
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a llmbook Tokenizer, got {type(tokenizer).__name__}")
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts) if isinstance(prompts, Sequence) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("prompts must be a str or a non-empty list of str")
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
    if stream is not None and not callable(stream):
        raise ValueError("stream must be a callable (row, text) or None")
    if add_bos is None:
        add_bos = tokenizer.adds_bos_by_default and tokenizer.bos_token_id is not None
    prompt_ids = tokenizer.encode_batch(texts, add_bos=add_bos)
    for i, p in enumerate(prompt_ids):
        if not p:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")

    eos: set[int] = set()
    if stop_at_eos:
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        config_eos = model.config.eos_token_id
        eos.update(config_eos if isinstance(config_eos, list) else [] if config_eos is None else [config_eos])
        if model.generation_config is not None:
            eos.update(model.generation_config.eos_token_id)
    suppress = [i for i in _undecodable_ids(tokenizer, model.config.vocab_size) if i not in eos]
    tracker = _TextTracker(tokenizer, prompt_ids, stop, eos, stream) if (stop or stream) else None
    constraint = None
    if grammar_engine not in ENGINES:
        raise ValueError(f"grammar_engine must be one of {list(ENGINES)}, got {grammar_engine!r}")
    if grammar_prefix and json_schema is None and grammar is None:
        raise ValueError("grammar_prefix needs json_schema= or grammar=")
    if grammar_engine != "llmbook" and json_schema is None and grammar is None:
        raise ValueError("grammar_engine needs json_schema= or grammar=")
    if json_schema is not None or grammar is not None:
        constraint = grammar_constraint(tokenizer, model.config.vocab_size, json_schema=json_schema,
                                        grammar=grammar, cache=grammar_cache, prefix=grammar_prefix,
                                        engine=grammar_engine)
    result = generate_ids(
        model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, seed=seed, generator=generator, eos_token_ids=sorted(eos) or None,
        record_distributions=record_distributions, on_step=tracker, suppress_token_ids=suppress or None,
        constraint=constraint, allow_extrapolation=allow_extrapolation,
    )
    if tracker is not None:
        tracker.finish()
        result.texts = tracker.texts
    else:
        result.texts = [
            _continuation(tokenizer, p, tokenizer.decode(p), row[:-1] if reason == FINISH_EOS else row)
            for p, row, reason in zip(prompt_ids, result.tokens, result.finish_reasons)
        ]
    return result


@torch.no_grad()
def next_token_logits(model: CausalLM, tokenizer: Tokenizer, prompt: str, add_bos: bool = True) -> torch.Tensor:
    """The model's logits for the token that follows ``prompt``: shape (V,), float32, on the CPU.

    For looking at one next-token distribution (tables, plots, widgets); ``add_bos`` puts BOS
    in front, as the book's models saw every document in training. V is the model's vocabulary;
    ids the tokenizer cannot decode (embedding rows past ``len(tokenizer)``, holes in its
    vocabulary) are -inf, as :func:`generate` never samples them, so a softmax, argmax or top-k
    of these logits only ever names tokens that have a text.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    ids = tokenizer.encode(prompt, add_bos=add_bos)
    if not ids:
        raise ValueError("prompt encodes to no tokens: pass a non-empty prompt or add_bos=True")
    logits = model(torch.tensor([ids], device=model.device))[0, -1].float().cpu()
    undecodable = _undecodable_ids(tokenizer, logits.shape[-1])
    if undecodable:
        logits[undecodable] = float("-inf")
    return logits
