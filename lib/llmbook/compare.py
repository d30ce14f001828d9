"""Score student models against a teacher on the same text: the measurement distillation and evaluation share.

``llmbook.distill`` reports how close each distilled student came to its teacher, and
``llmbook.world.evaluate`` how often the shipped draft model agrees with the main one (the
acceptance rate speculative decoding will depend on). Both use :func:`compare_with_teacher`;
it lives here so that neither module imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from llmbook.model import CausalLM
from llmbook.tokenizer import Tokenizer
from llmbook.train import encode_documents

__all__ = ["compare_with_teacher"]


def _windows(documents: Sequence[Sequence[int]], length: int) -> list[list[int]]:
    """Cut each document into pieces of at most ``length`` tokens overlapping by one: every target scored once."""
    pieces = []
    for doc in documents:
        for start in range(0, len(doc) - 1, length - 1):
            pieces.append(list(doc[start:start + length]))
    return pieces



@torch.no_grad()
def compare_with_teacher(teacher: CausalLM, students: Mapping[str, CausalLM], tokenizer: Tokenizer,
                         texts: Sequence[str], *, batch_size: int = 16) -> dict[str, dict[str, float]]:
    """Per-token scores of each student against the true next tokens and against the teacher (at T = 1).

    For each label: ``cross_entropy`` (nats/token of the true tokens), ``kl_from_teacher``
    (KL(teacher || student) in nats/token) and ``top1_agreement`` (share of positions where both
    argmaxes agree). ``"teacher"`` holds the teacher's own cross-entropy. Documents are read as
    ``[BOS] text [EOS]``; one longer than the smallest context is read in consecutive windows.
    """
    if not isinstance(teacher, CausalLM) or not all(isinstance(m, CausalLM) for m in students.values()):
        raise ValueError("teacher and every student must be llmbook CausalLM models")
    if any(m.device != teacher.device for m in students.values()):
        raise ValueError(f"every student must be on the teacher's device {teacher.device}")
    if "teacher" in students:
        raise ValueError("students must not use the label 'teacher' (it holds the teacher's own score)")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    context = min(m.config.max_position_embeddings for m in (teacher, *students.values()))
    pieces = sorted(_windows(encode_documents(texts, tokenizer), context), key=len, reverse=True)  # less padding
    if not pieces:
        raise ValueError("texts must hold at least one document")
    device = teacher.device
    sums = {label: [0.0, 0.0, 0] for label in students}  # summed cross-entropy, KL, agreements
    teacher_ce, count = 0.0, 0
    for start in range(0, len(pieces), batch_size):
        chunk = pieces[start:start + batch_size]
        batch = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.long)  # (B, L) any id pads: it is never a target
        real = torch.zeros(len(chunk), len(chunk[0]) - 1, dtype=torch.bool)  # (B, L-1) which targets exist
        for r, piece in enumerate(chunk):
            batch[r, :len(piece)] = torch.tensor(piece)
            real[r, :len(piece) - 1] = True
        batch, real = batch.to(device), real.to(device)
        targets = batch[:, 1:][real]  # (N,) right padding: causal attention keeps it out of real positions
        log_p = F.log_softmax(teacher(batch[:, :-1]).float()[real], dim=-1)  # (N, V)
        teacher_ce += float(F.nll_loss(log_p, targets, reduction="sum"))
        count += targets.numel()
        for label, student in students.items():
            log_q = F.log_softmax(student(batch[:, :-1]).float()[real], dim=-1)
            sums[label][0] += float(F.nll_loss(log_q, targets, reduction="sum"))
            sums[label][1] += float((log_p.exp() * (log_p - log_q)).sum())  # KL(p || q) summed over positions
            sums[label][2] += int((log_q.argmax(-1) == log_p.argmax(-1)).sum())
    scores = {"teacher": {"cross_entropy": teacher_ce / count, "n_tokens": count}}
    for label, (ce, kl, agree) in sums.items():
        scores[label] = {"cross_entropy": ce / count, "kl_from_teacher": kl / count, "top1_agreement": agree / count,
                         "n_tokens": count}
    return scores
