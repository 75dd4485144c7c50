"""The options commands share, as typed `Annotated` parameters, and the bundle complete and fim take."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..repo import CONTEXT_SHARE
from ..settings import Given
from . import completers

_MODEL, _GEN, _PROMPT, _OUT = "Model", "Generation", "Prompt", "Output"


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    jsonl = "jsonl"


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Checkpoint folder, hub repo id, or alias (tiny, 3b, 7b, 15b).",
        rich_help_panel=_MODEL,
        autocompletion=completers.model_names,
    ),
]
RevisionOpt = Annotated[str | None, typer.Option(help="Hub branch, tag or commit.", rich_help_panel=_MODEL)]
OfflineOpt = Annotated[
    bool | None, typer.Option("--offline", help="Use the local cache only.", rich_help_panel=_MODEL)
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        help="auto, cpu, cuda, cuda:N or mps.",
        rich_help_panel=_MODEL,
        autocompletion=completers.values_of("device"),
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        help="auto, bf16, fp16 or fp32.", rich_help_panel=_MODEL, autocompletion=completers.values_of("dtype")
    ),
]
QuantizeOpt = Annotated[
    str | None,
    typer.Option(
        help="none, int8 or int4: quantized weights, faster decode (embeddings and norms kept); quantized "
        "once, then loaded from the user cache folder.",
        rich_help_panel=_MODEL,
        autocompletion=completers.values_of("quantize"),
    ),
]
AttnOpt = Annotated[
    str | None,
    typer.Option(
        help="Attention: auto, sdpa, flash or eager.",
        rich_help_panel=_MODEL,
        autocompletion=completers.values_of("attn"),
    ),
]
MaxTokensOpt = Annotated[int | None, typer.Option(help="Most tokens to generate.", rich_help_panel=_GEN)]
TemperatureOpt = Annotated[float, typer.Option(help="0 is greedy.", rich_help_panel=_GEN)]
TopPOpt = Annotated[float | None, typer.Option(help="Nucleus sampling, in (0, 1].", rich_help_panel=_GEN)]
TopKOpt = Annotated[
    int | None, typer.Option(help="Sample among the k most likely tokens.", rich_help_panel=_GEN)
]
SeedOpt = Annotated[int | None, typer.Option(help="Makes sampling reproducible.", rich_help_panel=_GEN)]
StopOpt = Annotated[
    list[str] | None, typer.Option("--stop", help="Stop before this text (repeatable).", rich_help_panel=_GEN)
]
RawOpt = Annotated[
    bool,
    typer.Option("--raw", help="No post-processing: stop only at stop tokens/strings.", rich_help_panel=_GEN),
]
NoHealOpt = Annotated[
    bool,
    typer.Option(
        "--no-heal",
        help="Keep the prefix's last token in the prompt (no token healing): what the model sees is "
        "exactly the text before the cursor.",
        rich_help_panel=_GEN,
    ),
]
NoSpeculateOpt = Annotated[
    bool,
    typer.Option(
        "--no-speculate",
        help="Decode one token per pass: no drafts copied from the prompt (speculative decoding is on by "
        "default; greedy output is the same either way).",
        rich_help_panel=_GEN,
    ),
]
ContextOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--context",
        help="Another file of the repository to show the model (repeatable).",
        rich_help_panel=_PROMPT,
    ),
]
ContextBudgetOpt = Annotated[
    float,
    typer.Option(
        "--context-budget",
        min=0.0,
        max=0.9,
        help="Share of the prompt the prefix leaves to other files (--context and automatic context).",
        rich_help_panel=_PROMPT,
    ),
]
NoAutoContextOpt = Annotated[
    bool,
    typer.Option(
        "--no-auto-context",
        help="In a git repository, show only --context files: not the imported files and similar code "
        "sc2 finds among the tracked files.",
        rich_help_panel=_PROMPT,
    ),
]
RepoNameOpt = Annotated[
    str | None,
    typer.Option(
        help="Repository name in the prompt (default: the git root's folder name).", rich_help_panel=_PROMPT
    ),
]
NoMetadataOpt = Annotated[
    bool,
    typer.Option(
        "--no-metadata",
        help="Leave the repository name and file paths out of the prompt.",
        rich_help_panel=_PROMPT,
    ),
]
BudgetOpt = Annotated[
    int | None,
    typer.Option(
        help="Most tokens of prompt + completion (default: 2048 on CPU, 8192 on CUDA).",
        rich_help_panel=_PROMPT,
    ),
]
ShowPromptOpt = Annotated[
    bool,
    typer.Option(
        "--show-prompt", help="Print the exact prompt and exit (loads no weights).", rich_help_panel=_PROMPT
    ),
]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        "-f",
        help="text streams the completion; json/jsonl add tokens, logprobs, timings.",
        rich_help_panel=_OUT,
    ),
]
InsertOpt = Annotated[
    bool,
    typer.Option(
        "--insert", help="Print the whole buffer with the completion inserted.", rich_help_panel=_OUT
    ),
]
NoServerOpt = Annotated[
    bool,
    typer.Option(
        "--no-server", help="Run the model in this process even if a server is warm.", rich_help_panel=_MODEL
    ),
]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        help="Use this server: http://HOST:PORT or unix:///path.sock. A server started with --token needs "
        "the same token in SC2_SERVER_TOKEN.",
        rich_help_panel=_MODEL,
    ),
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        help="Complete through a serving engine: openai+http://HOST:PORT/v1 (vLLM, TGI, llama.cpp) or "
        "llama+http://HOST:PORT (llama.cpp's /completion). Setting: engine.",
        rich_help_panel=_MODEL,
    ),
]
EngineTokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SC2_ENGINE_TOKEN",
        show_envvar=True,
        help="Bearer token for the engine; prefer the SC2_ENGINE_TOKEN variable (argv is visible to others).",
        rich_help_panel=_MODEL,
    ),
]
ClientIdOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SC2_CLIENT_ID",
        help="Editor session id: the server cancels its older request.",
        rich_help_panel=_MODEL,
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Timings and notes on stderr even when it is not a terminal.",
        rich_help_panel=_OUT,
    ),
]


@dataclass(frozen=True)
class CompletionOptions:
    """The options complete and fim share, as the command receives them."""

    model: ModelOpt = None
    revision: RevisionOpt = None
    offline: OfflineOpt = None
    device: DeviceOpt = None
    dtype: DtypeOpt = None
    attn: AttnOpt = None
    quantize: QuantizeOpt = None
    max_tokens: MaxTokensOpt = None
    temperature: TemperatureOpt = 0.0
    top_p: TopPOpt = None
    top_k: TopKOpt = None
    seed: SeedOpt = None
    stop: StopOpt = None
    raw: RawOpt = False
    no_heal: NoHealOpt = False
    no_speculate: NoSpeculateOpt = False
    context: ContextOpt = None
    context_budget: ContextBudgetOpt = CONTEXT_SHARE
    no_auto_context: NoAutoContextOpt = False
    repo_name: RepoNameOpt = None
    no_metadata: NoMetadataOpt = False
    budget: BudgetOpt = None
    show_prompt: ShowPromptOpt = False
    output: FormatOpt = OutputFormat.text
    insert: InsertOpt = False
    verbose: VerboseOpt = False
    no_server: NoServerOpt = False
    server: ServerOpt = None
    client_id: ClientIdOpt = None
    engine: EngineOpt = None
    engine_token: EngineTokenOpt = None

    def settings_overrides(self) -> dict[str, Given]:
        """The options that are also settings (None: not given), under the settings' names."""
        return given_settings(
            model=self.model, device=self.device, dtype=self.dtype, attn=self.attn,
            max_tokens=self.max_tokens, prompt_budget=self.budget, offline=self.offline,
            quantize=self.quantize, engine=self.engine,
        )  # fmt: skip


# The option that sets each setting, as the user types it: errors name it (`--budget`, not prompt_budget).
SETTING_OPTIONS = {
    "model": "--model", "device": "--device", "dtype": "--dtype", "attn": "--attn",
    "max_tokens": "--max-tokens", "prompt_budget": "--budget", "offline": "--offline",
    "quantize": "--quantize", "engine": "--engine",
}  # fmt: skip


def given_settings(**values: object) -> dict[str, Given]:
    """Command-line values of settings (None: not given) for `load_settings`, each with its option's name."""
    return {key: Given(value, SETTING_OPTIONS[key]) for key, value in values.items()}


def with_completion_options(command):
    """Typer reads a command's options from its signature: add CompletionOptions' fields to `command`'s own
    parameters, and hand them to it as one typed `opts`."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "opts"]
    hints = typing.get_type_hints(CompletionOptions, include_extras=True)
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in dataclasses.fields(CompletionOptions)
    ]

    @functools.wraps(command)
    def wrapper(**values):
        return command(**{p.name: values.pop(p.name) for p in own}, opts=CompletionOptions(**values))

    wrapper.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
    return wrapper
