"""From generated tokens to the completion's events: the detokenizer, the stop rules (postprocess.Finisher)
and the file's newlines, in one place for every place a completion runs (the in-process engine, and the
clients of external engines, which feed it what their stream carries). Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .events import Done, Timings, Token, Usage
from .postprocess import Finisher, rules_for
from .prompt import Prompt, context_report
from .request import CompletionRequest
from .tokenizer import Detokenizer, Tokenizer

if TYPE_CHECKING:
    from .speculate import Speculation  # torch: the engine's side only


class Assembly:
    """Feed generated tokens (or, from an engine that sends text, text with the ids it came from); get back
    the `Token` events to send. `done` once the stop rules end the completion: stop generating then."""

    def __init__(self, request: CompletionRequest, tokenizer: Tokenizer, skip: int = 0) -> None:
        self.request = request
        self.finisher = Finisher(rules_for(request.prefix, request.suffix, request.stop, request.raw))
        self.detokenizer = Detokenizer(tokenizer, skip=skip)  # `skip`: the healed bytes, already in the text
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self._unsent = 0  # tokens[_unsent:] are not in any event yet

    @property
    def done(self) -> bool:
        return self.finisher.done

    def push(self, token: int, logprob: float) -> Token | None:
        """One generated token, decoded here."""
        return self.push_text(self.detokenizer.push(token), (token,), (logprob,))

    def push_text(self, text: str, ids: Sequence[int] = (), logprobs: Sequence[float] = ()) -> Token | None:
        """Text the model generated, already decoded (by an engine), and the tokens it came from."""
        self.tokens += ids
        self.logprobs += logprobs
        return self._event(self.finisher.feed(text))

    def close(self, stopped: bool = False) -> Token | None:
        """The model stopped by itself (end of text, token limit): settle what the rules held back. Nothing
        more when the rules ended it or the caller `stopped` it."""
        if self.finisher.done or stopped:
            return None
        return self._event(self.finisher.feed(self.detokenizer.flush()) + self.finisher.finish())

    def _event(self, piece: str) -> Token | None:
        if not piece:
            return None
        event = Token(
            piece.replace("\n", self.request.eol),
            tuple(self.tokens[self._unsent :]),
            tuple(self.logprobs[self._unsent :]),
        )
        self._unsent = len(self.tokens)
        return event

    def reason(self, generated: int, stopped: bool) -> str:
        """Why the completion ended: cancelled, the rules' reason, max_tokens or eos."""
        if stopped:
            return "cancelled"
        return self.finisher.reason or ("max_tokens" if generated >= self.request.max_tokens else "eos")

    def finished(
        self, prompt: Prompt, *, reason: str, usage: Usage, timings: Timings, model: str, healed: bytes
    ) -> Done:
        """The `Done` record that ends the stream."""
        return Done(
            text=self.finisher.final.replace("\n", self.request.eol),
            tokens=tuple(self.tokens),
            logprobs=tuple(self.logprobs),
            stop_reason=reason,
            usage=usage,
            timings=timings,
            truncated=prompt.truncated,
            healed=healed.decode("utf-8", "replace"),
            model=model,
            context=tuple(context_report(prompt)),
        )


def timings(
    load: float,
    started: float,
    first: float,
    ended: float,
    usage: Usage,
    speculation: Speculation | None = None,
) -> Timings:
    """Prefill (to the first token) and decode speeds from the clock readings of one completion, and how
    many drafted tokens the model kept (speculate.py)."""
    prefill, decode = first - started, ended - first
    computed, generated = usage.computed_tokens, usage.completion_tokens
    drafted, accepted = (speculation.drafted, speculation.accepted) if speculation else (0, 0)
    return Timings(
        load_s=round(load, 4),
        prefill_s=round(prefill, 4),
        prefill_tokens_per_s=round(computed / prefill, 2) if prefill > 0 else 0.0,
        decode_s=round(decode, 4),
        decode_tokens_per_s=round((generated - 1) / decode, 2) if decode > 0 and generated > 1 else 0.0,
        drafted_tokens=drafted,
        accepted_tokens=accepted,
        acceptance_rate=round(accepted / drafted, 3) if drafted else 0.0,
    )
