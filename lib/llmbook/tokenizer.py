"""Text <-> token ids: a thin wrapper over Hugging Face ``tokenizers`` (byte-level BPE).

It adds what the book needs on top of ``tokenizers.Tokenizer``: the special-token ids
(read from the tokenizer, a ``tokenizer_config.json``, or given), explicit BOS handling, and
``token_bytes(i)``, the exact bytes token ``i`` stands for. A byte-level BPE stores each byte
as a printable character (GPT-2's byte-to-unicode table, e.g. a space is ``'Ġ'``); undoing that
map gives the bytes, which grammar-constrained decoding needs because one character can be
split over several tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import tokenizers

__all__ = ["Tokenizer", "bytes_to_unicode"]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte 0..255 to a printable unicode character (used by byte-level BPE).

    Printable Latin-1 bytes map to themselves; the others (control chars, space, ...) are shifted
    to code points 256+ so that every byte has a visible, non-whitespace character.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _decoder_kind(spec: dict[str, Any] | None) -> str:
    """'byte_level' (GPT-2/Llama-3/Qwen2 style), 'sentencepiece' (Metaspace + byte fallback) or 'other'."""
    if not spec:
        return "other"
    parts = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
    types = {p.get("type") for p in parts}
    if "ByteLevel" in types:
        return "byte_level"
    if "ByteFallback" in types or "Metaspace" in types or any(
        p.get("type") == "Replace" and p.get("pattern", {}).get("String") == "▁" for p in parts
    ):
        return "sentencepiece"
    return "other"


def _has_byte_fallback(spec: dict[str, Any] | None) -> bool:
    """Whether the decoder turns ``<0xNN>`` tokens into bytes (SentencePiece byte fallback)."""
    if not spec:
        return False
    parts = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
    return any(p.get("type") == "ByteFallback" for p in parts)


def _add_declared_tokens(tok: tokenizers.Tokenizer, config: dict[str, Any], source: Path) -> None:
    """Add the tokens ``tokenizer_config.json``'s ``added_tokens_decoder`` declares and tokenizer.json lacks.

    transformers adds such a token after the last id, whatever id the file declares; llmbook adds
    it only where it lands on its declared id (the embedding row trained for it) and refuses a
    token that tokenizer.json holds under another id, or an id that names another token.
    """
    declared = config.get("added_tokens_decoder")
    if not declared:
        return
    if not isinstance(declared, dict):
        raise ValueError(f"{source}: added_tokens_decoder must map ids to tokens, got {type(declared).__name__}")
    for key, entry in sorted(declared.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else -1):
        content = _token_content(entry)
        if not str(key).isdigit() or content is None:
            raise ValueError(f"{source}: added_tokens_decoder entry {key!r}: {entry!r} needs an integer id and a 'content'")
        i = int(key)
        found = tok.token_to_id(content)
        if found == i:
            continue
        if found is not None:
            raise ValueError(f"{source}: added_tokens_decoder gives {content!r} id {i}, but tokenizer.json has it as id {found}")
        if tok.id_to_token(i) is not None:
            raise ValueError(f"{source}: added_tokens_decoder gives id {i} to {content!r}, "
                             f"but in tokenizer.json id {i} is {tok.id_to_token(i)!r}")
        flags = entry if isinstance(entry, dict) else {}
        token = tokenizers.AddedToken(content, single_word=bool(flags.get("single_word", False)),
                                      lstrip=bool(flags.get("lstrip", False)), rstrip=bool(flags.get("rstrip", False)),
                                      normalized=bool(flags.get("normalized", not flags.get("special", True))),
                                      special=bool(flags.get("special", True)))
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
        if tok.token_to_id(content) != i:
            raise ValueError(f"{source}: added_tokens_decoder declares {content!r} as id {i}, which tokenizer.json "
                             f"does not have; added, it would be id {tok.token_to_id(content)}")


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _bos_from_post_processor(spec: dict[str, Any] | None) -> str | None:
    """The special token a TemplateProcessing post-processor puts first (Llama's BOS), if any."""
    if not spec:
        return None
    if spec.get("type") == "Sequence":
        for inner in spec.get("processors", []):
            found = _bos_from_post_processor(inner)
            if found is not None:
                return found
        return None
    if spec.get("type") == "TemplateProcessing":
        single = spec.get("single") or []
        if single and "SpecialToken" in single[0]:
            return single[0]["SpecialToken"]["id"]
    return None


class Tokenizer:
    """Byte-level BPE tokenizer with explicit special tokens.

    ``encode`` never lets the underlying post-processor add tokens behind your back: BOS is
    added only when ``add_bos=True``, so token counts in a chapter are what they seem.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None,
                 tokenizer_config: dict[str, Any] | None = None) -> None:
        if not isinstance(tokenizer, tokenizers.Tokenizer):
            raise ValueError(f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        self._tok = tokenizer
        self.tokenizer_config = dict(tokenizer_config or {})
        spec = json.loads(tokenizer.to_str())
        self._decoder_kind = _decoder_kind(spec.get("decoder"))
        self._has_byte_fallback = _has_byte_fallback(spec.get("decoder"))
        self._byte_fallback_ids: frozenset[int] | None = None
        self._ids_cache: tuple[int, int, frozenset[int]] | None = None
        self._added: dict[int, tokenizers.AddedToken] = dict(tokenizer.get_added_tokens_decoder())
        self.special_ids: frozenset[int] = frozenset(i for i, t in self._added.items() if t.special)

        def from_config(key: str) -> int | None:
            content = _token_content(self.tokenizer_config.get(key))
            if content is None:
                return None
            i = tokenizer.token_to_id(content)
            if i is None:
                raise ValueError(f"tokenizer_config[{key!r}] = {content!r} is not a token of this tokenizer")
            return i

        bos_from_template = _bos_from_post_processor(spec.get("post_processor"))
        # Whether transformers would put BOS in front by default: tokenizer_config.json's
        # add_bos_token when it says so, otherwise whether the post-processor template starts with one.
        add_bos = self.tokenizer_config.get("add_bos_token")
        self.adds_bos_by_default: bool = bool(add_bos) if isinstance(add_bos, bool) else bos_from_template is not None
        if bos_token_id is not None:
            self.bos_token_id = self._check_id("bos_token_id", bos_token_id)
        else:
            self.bos_token_id = from_config("bos_token")
            if self.bos_token_id is None and bos_from_template is not None:
                self.bos_token_id = tokenizer.token_to_id(bos_from_template)
        self.eos_token_id = self._check_id("eos_token_id", eos_token_id) if eos_token_id is not None else from_config("eos_token")
        self.pad_token_id = self._check_id("pad_token_id", pad_token_id) if pad_token_id is not None else from_config("pad_token")

    # ------------------------------------------------------------------ construction and saving
    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **special_ids: int | None) -> "Tokenizer":
        """Load ``tokenizer.json`` (or a directory holding it, plus an optional ``tokenizer_config.json``).

        Tokens that ``tokenizer_config.json``'s ``added_tokens_decoder`` declares and tokenizer.json
        lacks are added at their declared id; a declaration that disagrees with tokenizer.json
        (another id for the token, another token for the id) raises ``ValueError``.
        """
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        file = directory / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"tokenizer file not found: {file}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"could not read tokenizer file {file}: {err}") from err
        config: dict[str, Any] = {}
        config_file = directory / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ValueError(f"could not parse {config_file}: {err}") from err
        _add_declared_tokens(tok, config, config_file)
        return cls(tok, tokenizer_config=config, **special_ids)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``tokenizer.json`` and a ``tokenizer_config.json`` naming the special tokens."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        config = {k: v for k, v in self.tokenizer_config.items() if k not in ("bos_token", "eos_token", "pad_token")}
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        config.setdefault("add_bos_token", self.adds_bos_by_default)
        for key, i in (("bos_token", self.bos_token_id), ("eos_token", self.eos_token_id), ("pad_token", self.pad_token_id)):
            config[key] = self._tok.id_to_token(i) if i is not None else None
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    # ------------------------------------------------------------------ ids and tokens
    def _ids(self) -> tuple[int, frozenset[int]]:
        """(largest id + 1, ids below it that name no token), recomputed when tokens are added."""
        count = self._tok.get_vocab_size(with_added_tokens=True)
        if self._ids_cache is None or self._ids_cache[0] != count:
            assigned = set(self._tok.get_vocab(with_added_tokens=True).values())
            size = max(assigned, default=-1) + 1
            self._ids_cache = (count, size, frozenset(set(range(size)) - assigned))
        return self._ids_cache[1], self._ids_cache[2]

    @property
    def vocab_size(self) -> int:
        """Largest token id + 1 (added/special tokens included): the embedding rows this tokenizer needs.

        Usually the number of tokens; a vocabulary with holes (ids that name no token, see
        :attr:`unassigned_ids`) has fewer tokens than this.
        """
        return self._ids()[0]

    @property
    def unassigned_ids(self) -> frozenset[int]:
        """Ids below :attr:`vocab_size` that name no token (a vocabulary with holes; usually empty)."""
        return self._ids()[1]

    @property
    def byte_fallback_ids(self) -> frozenset[int]:
        """Ids of the ``<0xNN>`` byte tokens when the decoder has SentencePiece byte fallback (else empty).

        A run of such tokens is decoded together: valid UTF-8 gives its characters, invalid UTF-8
        gives one U+FFFD per byte, so the text of a run can change until the run ends.
        """
        if self._byte_fallback_ids is None:
            ids: set[int] = set()
            if self._has_byte_fallback:
                for token, i in self._tok.get_vocab(with_added_tokens=False).items():
                    if len(token) == 6 and token.startswith("<0x") and token.endswith(">") and i not in self._added:
                        ids.add(i)
            self._byte_fallback_ids = frozenset(ids)
        return self._byte_fallback_ids

    def _check_id(self, name: str, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size:
            raise ValueError(f"{name} must be a token id in [0, {self.vocab_size - 1}], got {i!r}")
        if self._tok.id_to_token(i) is None:
            raise ValueError(f"{name}={i} is not assigned to any token in this tokenizer")
        return i

    def id_to_token(self, i: int) -> str:
        """The vocabulary string of token ``i`` (byte-level characters, e.g. ``'Ġthe'``)."""
        self._check_id("i", i)
        return self._tok.id_to_token(i)

    def token_to_id(self, token: str) -> int:
        """The id of vocabulary string ``token``; ``ValueError`` if it is not in the vocabulary."""
        if not isinstance(token, str):
            raise ValueError(f"token must be a str, got {type(token).__name__}")
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return i

    def token_bytes(self, i: int) -> bytes:
        """The exact bytes token ``i`` decodes to.

        Byte-level tokens map each character back through GPT-2's table (so a token may be part
        of a multi-byte UTF-8 character); added and special tokens are their content as UTF-8
        (what ``decode(..., skip_special_tokens=False)`` prints; ``special_ids`` lists the special ones).
        SentencePiece-style tokens turn ``'▁'`` into a space and ``<0xNN>`` into byte NN.
        """
        token = self.id_to_token(i)
        if i in self._added:
            return self._added[i].content.encode("utf-8")
        if self._decoder_kind == "byte_level":
            table = _unicode_to_byte()
            try:
                return bytes(table[c] for c in token)
            except KeyError as err:
                raise ValueError(f"token {i} ({token!r}) has a character outside the byte-level alphabet: {err}") from None
        if self._decoder_kind == "sentencepiece":
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                return bytes([int(token[3:5], 16)])
            return token.replace("▁", " ").encode("utf-8")
        raise ValueError("token_bytes needs a ByteLevel or SentencePiece-style (Metaspace/ByteFallback) decoder; this tokenizer has neither")

    # ------------------------------------------------------------------ text
    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_bos`` the BOS id first (``ValueError`` if there is none)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return self._with_bos(ids) if add_bos else ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
        """``encode`` for each text (parallel in Rust)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a sequence of str")
        out = [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        return [self._with_bos(ids) for ids in out] if add_bos else out

    def _with_bos(self, ids: list[int]) -> list[int]:
        if self.bos_token_id is None:
            raise ValueError("add_bos=True but this tokenizer has no BOS token (pass bos_token_id or a tokenizer_config.json)")
        return [self.bos_token_id, *ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids (invalid UTF-8 from a partial character shows as U+FFFD).

        Every id must name a token: ids outside ``[0, vocab_size)`` (e.g. the rows a model's
        embedding has past the tokenizer, as Qwen2's 151,936 rows for 151,646 tokens) and
        :attr:`unassigned_ids` raise ``ValueError``. (``tokenizers`` and transformers silently
        decode them to ''; :func:`llmbook.generate.generate` never samples them.)
        The text is exact: no clean-up of spaces (transformers' ``clean_up_tokenization_spaces``),
        so ``decode(encode(text)) == text`` for a tokenizer that can represent ``text``.
        """
        ids = [int(i) for i in ids]
        size = self.vocab_size
        for i in ids:
            if not 0 <= i < size:
                raise ValueError(f"ids must be token ids in [0, {size - 1}], got {i}")
        holes = self.unassigned_ids
        if holes:
            for i in ids:
                if i in holes:
                    raise ValueError(f"ids must be token ids this tokenizer assigns; id {i} names no token")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos_token_id={self.bos_token_id}, "
                f"eos_token_id={self.eos_token_id}, pad_token_id={self.pad_token_id})")

    # ------------------------------------------------------------------ chat
    @property
    def chat_template(self) -> str | None:
        """The checkpoint's Jinja chat template (``tokenizer_config.json``'s ``chat_template``), or None."""
        template = self.tokenizer_config.get("chat_template")
        if isinstance(template, list):  # some checkpoints list named templates; "default" is the chat one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) and template else None

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = False,
                            tokenize: bool = False, chat_template: str | None = None,
                            **template_kwargs: Any) -> str | list[int]:
        """Render ``messages`` (dicts with ``role`` and ``content``) with the checkpoint's chat template.

        Renders the template with ``jinja2`` exactly as transformers does (a sandboxed environment
        with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension, a JSON ``tojson``,
        ``raise_exception`` and ``strftime_now``), with the special tokens (``bos_token``,
        ``eos_token``, ``pad_token``, ``unk_token``) and ``template_kwargs`` (e.g. ``tools``) as
        variables. ``add_generation_prompt`` ends with the header of the assistant's turn, so
        generation continues as the assistant. Returns the text, or with ``tokenize`` its ids
        (special tokens in the text become their ids; nothing else is added).
        Raises ``ValueError`` when there is no template or a message is malformed.
        """
        template = chat_template if chat_template is not None else self.chat_template
        if not isinstance(template, str) or not template:
            raise ValueError("this tokenizer has no chat_template (tokenizer_config.json); pass chat_template=")
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message:
                raise ValueError(f"messages[{i}] must be a dict with a 'role' (and usually 'content'), got {message!r}")
        variables: dict[str, Any] = {}
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            content = _token_content(self.tokenizer_config.get(key))
            if content is not None:
                variables[key] = content
        variables.update(template_kwargs)
        text = _compiled_template(template).render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **variables
        )
        return self.encode(text) if tokenize else text


@lru_cache(maxsize=16)
def _compiled_template(template: str):  # -> jinja2.Template
    """Compile a chat template in the environment transformers uses (utils/chat_template_utils.py)."""
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        # jinja2's own tojson escapes HTML characters, which would change the prompt.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ValueError(f"chat_template is not a valid Jinja template: {err}") from err
